"""eval.json is one typed record (pipeline/record.py), written by evaluate and read by the
report and its figures through the same definition; kinds and the stderr come from gm.base."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gm.base import KINDS, Extras, LogLikelihood, mean_stderr
from pipeline import compare, plots, report, tables
from pipeline.record import (AISConvergence, AISPoint, Bounds, Estimate, EvalRecord,
                             ExtrasRecord, RecordError, Timing, Validation, sample_metrics_from)

ROOT = Path(__file__).resolve().parents[1]


def sandwich_ll(shift=0.0, kind="estimate") -> LogLikelihood:
    values = torch.tensor([-5.0, -6.0, -7.5, -4.0]) + shift
    return LogLikelihood(values, "ais", kind, shared_stderr=0.1, info={"log_z": 3.5},
                         bounds={"lower": values - 0.25, "upper": values + 0.5})


def record(model="rbm", seed=0, mean_shift=0.0, kind="estimate") -> EvalRecord:
    ll = sandwich_ll(mean_shift, kind)
    exact = LogLikelihood(ll.values + 0.125, "exact", "exact", info={"log_z": 3.0})
    metric = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "se": 0.1, "level": 0.95,
              "n_boot": 10, "ci_method": "normal", "better": "higher", "space": "pixels"}
    return EvalRecord(
        dataset="bars_stripes", model=model, seed=seed, data_view="binary",
        test_log_likelihood=Estimate.of(ll), n_parameters=288,
        timing=Timing(train_seconds=1.5, eval_seconds=0.25),
        log_likelihood_bounds=Bounds.of(ll),
        estimator_validation={"exact": Validation.of(exact, ll)},
        ais_convergence=AISConvergence(4.0, (AISPoint(10, 3.0, 0.5), AISPoint(100, 3.9, 0.1))),
        extras=ExtrasRecord.of(Extras(metrics={"chain_quality": 2}, tables={"t": [{"a": 1}]},
                                      images={"chain": torch.zeros(1, 16)})),
        sample_metrics=sample_metrics_from({"precision_pixel": metric}),
        budget={"ais_chains": 20, "ais_convergence": [10, 100], "parzen_sigma": None})


def test_record_round_trips_through_its_own_file(tmp_path):
    rec = record()
    rec.write(tmp_path / "eval.json")
    assert EvalRecord.read(tmp_path / "eval.json") == rec
    assert not list(tmp_path.glob(".*.tmp")), "writes go through a temp file and a rename"


def test_json_layout_is_the_architecture_contract(tmp_path):
    record().write(tmp_path / "eval.json")
    ev = json.loads((tmp_path / "eval.json").read_text())
    for key in ("dataset", "model", "seed", "test_log_likelihood", "sample_metrics",
                "train_seconds", "eval_seconds", "n_parameters", "log_likelihood_bounds",
                "budget"):
        assert key in ev, key
    ll = ev["test_log_likelihood"]
    assert set(ll) == {"mean", "stderr", "method", "kind", "n", "info"}
    assert ll["mean"] == pytest.approx(-5.625) and ll["n"] == 4
    assert ll["stderr"] == pytest.approx(math.hypot(mean_stderr(sandwich_ll().values), 0.1))
    b = ev["log_likelihood_bounds"]
    assert b["gap"] == pytest.approx(b["upper"]["mean"] - b["lower"]["mean"]) == 0.75
    assert ev["estimator_validation"]["exact"]["difference"] == pytest.approx(0.125)
    assert ev["estimator_validation"]["exact"]["reference_method"] == "ais"
    assert ev["extras"] == {"metrics": {"chain_quality": 2.0}, "tables": {"t": [{"a": 1}]},
                            "images": ["chain"]}
    assert ev["sample_metrics"]["precision_pixel"]["space"] == "pixels"   # details kept


def test_optional_parts_are_left_out_and_read_back_as_empty(tmp_path):
    rec = EvalRecord("digits", "nade", 1, "binary",
                     Estimate.of(LogLikelihood(torch.tensor([-3.0]), "exact", "exact")),
                     n_parameters=5, timing=Timing(1.0, 2.0))
    rec.write(tmp_path / "eval.json")
    ev = json.loads((tmp_path / "eval.json").read_text())
    for key in ("log_likelihood_bounds", "estimator_validation", "ais_convergence", "budget"):
        assert key not in ev, key
    assert "info" not in ev["test_log_likelihood"]
    assert ev["test_log_likelihood"]["stderr"] == 0.0          # one example: no spread
    assert EvalRecord.read(tmp_path / "eval.json") == rec


@pytest.mark.parametrize("edit, message", [
    (lambda ev: ev.__setitem__("colour", 1), "colour: unknown key"),
    (lambda ev: ev.pop("n_parameters"), "n_parameters: missing"),
    (lambda ev: ev["test_log_likelihood"].__setitem__("kind", "guess"),
     "test_log_likelihood.kind: 'guess' is not one of " + ", ".join(KINDS)),
    (lambda ev: ev["test_log_likelihood"].__setitem__("mean", "high"),
     "test_log_likelihood.mean: expected float"),
    (lambda ev: ev["log_likelihood_bounds"].pop("gap"), "log_likelihood_bounds.gap: missing"),
    (lambda ev: ev["sample_metrics"]["precision_pixel"].pop("ci_low"),
     "sample_metrics.precision_pixel.ci_low: missing"),
])
def test_a_malformed_file_names_the_file_and_the_key(tmp_path, edit, message):
    path = tmp_path / "eval.json"
    ev = record().to_dict()
    edit(ev)
    path.write_text(json.dumps(ev))
    with pytest.raises(RecordError) as err:
        EvalRecord.read(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_existing_run_records_read_back_unchanged():
    """Records of a run in this checkout (if any) read and write back byte for byte."""
    files = sorted((ROOT / "results").glob("*/*/seed*/eval.json"))
    if not files:
        pytest.skip("no results/ in this checkout")
    for f in files:
        assert json.dumps(EvalRecord.read(f).to_dict(), indent=2, sort_keys=True) + "\n" \
            == f.read_text(), f


def test_report_tables_read_the_typed_fields():
    evals = [record(seed=0), record(seed=1, mean_shift=-1.0),
             record(model="gan", kind="proxy")]
    long = report.long_table(evals)
    rows = long[(long["model"] == "rbm") & (long["seed"] == 0)].set_index("metric")
    assert rows.loc["test_log_likelihood", "value"] == pytest.approx(-5.625)
    assert rows.loc["test_log_likelihood_lower", "kind"] == "lower_bound"
    assert rows.loc["test_log_likelihood_upper", "value"] == pytest.approx(-5.125)
    assert rows.loc["precision_pixel", "ci_high"] == 0.75
    assert rows.loc["extra_chain_quality", "value"] == 2.0
    assert rows.loc["n_parameters", "value"] == 288.0

    rows = {s.model: s for s in tables.summarise(evals, {"rbm": False, "gan": False})}
    rbm = rows["rbm"]
    assert rbm.seeds == [0, 1] and rbm.kind == "estimate" and rbm.group == "likelihood"
    assert rbm.mean == pytest.approx(-6.125)
    half = 12.7062047 * np.std([-5.625, -6.625], ddof=1) / math.sqrt(2)   # t(0.975, 1 dof)
    assert rbm.interval() == pytest.approx((-6.125 - half, -6.125 + half), rel=1e-7)
    assert rows["gan"].group == "proxy" and rows["gan"].interval() is None   # one seed
    info = tables.DatasetInfo(data_dim=16)
    table = tables.value_table([rbm], "likelihood", "binary", info, {"rbm": 1})
    assert table.loc[0, "bits/dim"] == f"{6.125 / (16 * math.log(2)):.3f}"
    assert table.loc[0, "95% CI across seeds"].startswith("[")
    assert tables.bracket_table([rbm]).loc[0, "bracket [RAISE, AIS] [nats/image]"] \
        == "[-6.375, -5.625]"
    val = report.validation_table(evals)
    assert set(val["reference kind"]) == {"estimate", "proxy"} and set(val["kind"]) == {"exact"}


def test_every_kind_has_a_rank_group_and_a_colour():
    assert set(compare.GROUPS) == set(KINDS) == set(plots.KIND_COLORS)
    assert compare.GROUPS["exact"] == compare.GROUPS["estimate"] == "likelihood"
    assert len({compare.GROUPS[k] for k in KINDS}) == len(KINDS) - 1


def test_the_pipeline_never_probes_models_with_hasattr():
    for f in (ROOT / "pipeline").glob("*.py"):
        assert "hasattr(" not in f.read_text(), f
