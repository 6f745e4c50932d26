"""The research-scale Fashion-MNIST profile (configs/fashion.yaml, issue 17): its params, its
fixed stochastic binarization, and all of its stages on a 500-image slice with real Snakemake.

The profile itself (50,000 / 10,000 / 10,000 images, the papers' estimator budgets) runs about
1.5 hours on 2 CPU cores; these tests check everything but its size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, make_project, run
from gm.data import dataset_spec, load_splits
from gm.data.fashion_mnist import DEBIAN_DIR, stochastic_binarization
from gm.data.idx import read_idx, write_idx
from gm.data.splits import SPLITS, CarveOptions, carve_indices
from gm.errors import ConfigError
from pipeline import params as P
from pipeline.preflight import check_config

CONFIG = ROOT / "configs" / "fashion.yaml"
N_TRAIN, N_TEST, VAL = 400, 100, 80


def profile() -> dict:
    return P.load([ROOT / "params.yaml", CONFIG])


# --- the params file ------------------------------------------------------------------------

def test_fashion_profile_validates_as_the_pipeline_reads_it():
    """Merged over params.yaml as `snakemake --configfile` does, and alone (a complete file);
    checked by the Snakefile's own check (strict YAML, fields, every run's memory)."""
    merged = profile()
    alone = P.load(CONFIG)
    assert merged["runs"] == alone["runs"]
    raw = P.merge(P.read_yaml(ROOT / "params.yaml"), P.read_yaml(CONFIG))
    check_config(raw, [ROOT / "params.yaml", CONFIG], memory=True)   # exits 2 on a problem


def test_fashion_profile_is_full_data_at_the_papers_budgets():
    p = profile()
    assert {r["dataset"] for r in p["runs"]} == {"fashion_mnist"} and p["seeds"] == [0]
    data = dataset_spec("fashion_mnist").check_options(p["datasets"]["fashion_mnist"])
    assert data.binarization == "stochastic" and data.binarization_seed is not None
    assert data.val_size == 10000 and (data.max_train, data.max_val, data.max_test) == \
        (None, None, None)                     # 50,000 / 10,000 / 10,000
    ev = P.evaluate_config(p)
    assert (ev.ais_chains, ev.ais_betas) == (100, 14500)        # Salakhutdinov & Murray 2008
    # Burda et al. 2016: k = 5,000; RAISE with one chain; both on a fixed test subset
    assert ev.importance_samples == 5000 and ev.raise_chains >= 1 and 0 < ev.test_subset < 10000
    assert P.evaluate_config(p, "dbn").importance_samples == 5000
    assert str(P.report_dir(p)) == "reports/fashion_mnist"
    assert ev.parzen_samples == 10000                             # Goodfellow et al. 2014
    models = {r["model"] for r in p["runs"]}
    wanted = {"rbm", "rbm_cd10", "dbn", "dbm", "fvsbn", "nade", "made", "sbn", "vae",
              "iwae_k5", "iwae_k50", "gan", "gmmn", "cae", "dae", "gsn", "diffusion",
              "conv_rbm", "independent", "mixture_bernoulli"}
    assert wanted <= models
    arch = {name: P.train_settings(p, name, "fashion_mnist")["model"] for name in models}
    assert arch["rbm"]["n_hidden"] == arch["rbm_cd10"]["n_hidden"] == 500
    assert (arch["rbm"]["cd_k"], arch["rbm_cd10"]["cd_k"]) == (1, 10)
    assert (arch["dbm"]["n_hidden1"], arch["dbm"]["n_hidden2"]) == (500, 1000)
    assert arch["nade"]["n_hidden"] == 500 and arch["made"]["hidden_sizes"] == [500]
    assert arch["sbn"]["hidden"] == [200] and arch["sbn"]["method"] == "nvil"
    assert [arch[m]["iwae_k"] for m in ("vae", "iwae_k5", "iwae_k50")] == [1, 5, 50]
    assert all(arch[m]["hidden"] == [200, 200] and arch[m]["latent_dim"] == 50
               for m in ("vae", "iwae_k5", "iwae_k50"))
    assert arch["gan"]["hidden"] == [1200, 1200]
    assert all(arch[m]["data_view"] == "real" for m in ("gan", "gmmn", "cae", "gsn"))
    assert P.evaluate_config(p, "made").ensemble_masks == 32


def test_every_model_block_of_the_profile_is_its_own():
    """Each run's block is complete in configs/fashion.yaml (nothing inherited from
    params.yaml's small-data settings by the key-by-key merge), and each states its epochs
    with the measured seconds per epoch in a comment."""
    own = P.read_yaml(CONFIG)["models"]
    merged = profile()["models"]
    text = CONFIG.read_text()
    for entry in P.read_yaml(CONFIG)["runs"]:
        name = entry["model"]
        assert own[name] == merged[name], name
        assert {"epochs", "batch_size", "checkpoint_every"} <= set(own[name]["train"]), name
        block = re.search(rf"^  {name}:.*?(?=^  \w+:|\Z)", text, re.M | re.S).group(0)
        assert re.search(r"s/epoch", block), f"{name}: no measured s/epoch comment"


# --- the fixed stochastic binarization --------------------------------------------------------

@pytest.fixture
def grey_dir(tmp_path):
    """The four MNIST-layout files with smooth random grey images (every level present)."""
    rng = np.random.default_rng(11)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        base = rng.integers(0, 256, (n, 1, 1))
        images = np.clip(base + rng.integers(-60, 61, (n, 28, 28)), 0, 255)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def prepare(raw, **options):
    return dataset_spec("fashion_mnist").prepare(raw, 0, val_size=VAL, **options)


def test_stochastic_binarization_is_fixed_by_its_seed_and_recorded(grey_dir, tmp_path):
    a = prepare(grey_dir, binarization="stochastic", binarization_seed=5)
    b = prepare(grey_dir, binarization="stochastic", binarization_seed=5)
    c = prepare(grey_dir, binarization="stochastic", binarization_seed=6)
    for s in SPLITS:
        np.testing.assert_array_equal(a.x[s], b.x[s])
        np.testing.assert_array_equal(a.r[s], c.r[s])       # the real view does not change
        assert set(np.unique(a.x[s])) <= {0.0, 1.0}
    info = a.info["binarization"]
    assert info["method"] == "stochastic" and info["seed"] == 5
    assert a.checksum() == b.checksum() != c.checksum()
    assert info["sha256"] == b.info["binarization"]["sha256"] != c.info["binarization"]["sha256"]
    assert a.binarization == "fixed"          # never resampled by the training loop
    digest = a.save(tmp_path / "fashion_mnist.npz")
    loaded = load_splits(tmp_path / "fashion_mnist.npz")
    assert loaded.checksum() == digest and loaded.info == a.info


def test_stochastic_pixels_follow_the_grey_levels_and_differ_from_the_threshold(grey_dir):
    opts = CarveOptions(val_size=VAL)
    idx = carve_indices(N_TRAIN, N_TEST, opts, seed=0)
    st = prepare(grey_dir, binarization="stochastic", binarization_seed=1)
    th = prepare(grey_dir)
    k = read_idx(grey_dir / "train-images-idx3-ubyte.gz").reshape(-1, 784)[idx["train"]]
    p = k / 255.0
    x = st.x["train"]
    # per-pixel means over images: within 5 standard errors of the grey means
    se = np.sqrt((p * (1 - p)).sum(0)) / len(p)
    assert (np.abs(x.mean(0) - p.mean(0)) <= 5 * se + 1e-12).mean() > 0.99
    assert abs(x.mean() - p.mean()) < 0.005
    assert (x[k == 0] == 0).all() and (x[k == 255] == 1).all()    # certain pixels stay certain
    np.testing.assert_array_equal(th.x["train"], k >= 128)          # the default is unchanged
    assert th.binarization == "fixed" and th.info == {}
    assert 0.1 < (x != th.x["train"]).mean() < 0.5


def test_the_draw_is_the_datasets_own_so_subsets_nest(grey_dir):
    """Drawn once per official file before the splits are cut: a subset's binary images are
    those of the full data, and the recorded sha256 of the draw is the same."""
    full = prepare(grey_dir, binarization="stochastic", binarization_seed=3)
    sub = prepare(grey_dir, binarization="stochastic", binarization_seed=3, max_train=50,
                  max_test=20)
    idx_full = carve_indices(N_TRAIN, N_TEST, CarveOptions(val_size=VAL), 0)
    idx_sub = carve_indices(N_TRAIN, N_TEST, CarveOptions(val_size=VAL, max_train=50,
                                                          max_test=20), 0)
    for s in SPLITS:
        pos = np.searchsorted(idx_full[s], idx_sub[s])
        np.testing.assert_array_equal(sub.x[s], full.x[s][pos])
    assert sub.info["binarization"]["sha256"] == full.info["binarization"]["sha256"]
    assert sub.info["binarization"]["splits_sha256"] != full.info["binarization"]["splits_sha256"]


def test_bernoulli_probability_is_exactly_grey_over_255():
    k = np.full((4000, 256), np.arange(256), dtype=np.uint8)
    x = stochastic_binarization(k, seed=0, source="train")
    p = np.arange(256) / 255
    assert np.abs(x.mean(0) - p).max() < 5 * np.sqrt(0.25 / 4000)
    assert x[:, 0].max() == 0 and x[:, 255].min() == 1


@pytest.mark.parametrize("options, field", [
    ({"binarization": "stochastic"}, "datasets.fashion_mnist.binarization_seed"),
    ({"binarization": "stochastic", "binarization_seed": -1},
     "datasets.fashion_mnist.binarization_seed"),
    ({"binarization_seed": 3}, "datasets.fashion_mnist.binarization_seed"),
    ({"binarization": "bernoulli"}, "datasets.fashion_mnist.binarization"),
])
def test_bad_binarization_options_name_the_field(options, field):
    with pytest.raises(ConfigError) as err:
        dataset_spec("fashion_mnist").check_options(options)
    assert err.value.field == field


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist "
                    "not installed: apt-get install dataset-fashion-mnist")
def test_profile_data_from_the_debian_package(tmp_path):
    """The profile's own options on the real files: 50k/10k/10k, and per-pixel means of the
    draw within 0.005 of the grey means over the 50,000 training images."""
    spec = dataset_spec("fashion_mnist")
    opts = profile()["datasets"]["fashion_mnist"]
    s = spec.prepare(DEBIAN_DIR, 0, **opts)
    assert [len(s.x[p]) for p in SPLITS] == [50000, 10000, 10000]
    assert np.abs(s.x["train"].mean(0) - s.r["train"].mean(0)).max() < 0.01
    assert s.info["binarization"]["seed"] == opts["binarization_seed"]


# --- every stage on a slice, with real Snakemake -------------------------------------------

TINY_EVALUATE = {"ais_chains": 8, "ais_betas": 50, "raise_chains": 1, "test_subset": 40,
                 "importance_samples": 8,
                 "decoder_ais_chains": 1, "decoder_ais_betas": 5, "decoder_ais_leapfrog": 1,
                 "parzen_samples": 200, "ensemble_masks": 2, "bound_samples": 1,
                 "trajectory_samples": 2,
                 "n_samples": 64, "n_bootstrap": 5, "ais_convergence": [10]}


# the runs whose headline estimator costs per test example (RAISE, importance sampling)
PER_EXAMPLE_COST = {"rbm", "rbm_cd10", "dbm", "dbn", "sbn", "vae", "iwae_k5", "iwae_k50",
                    "diffusion"}


def slice_override(config: dict) -> dict:
    """configs/fashion.yaml cut to a 500-image slice: its models and architectures, 1 epoch
    (the multi-phase ones one epoch per phase), tiny estimator budgets everywhere (a model's
    own evaluate: overrides too) and short sampling chains."""
    models = {}
    for name, block in config["models"].items():
        train = dict(block["train"], epochs=1, checkpoint_every=0)
        model = dict(block["model"])
        if "layer_epochs" in model:                       # dbn: one epoch per layer
            model["layer_epochs"] = [1] * len(model["layer_epochs"])
            train["epochs"] = len(model["layer_epochs"])
        if "pretrain_epochs" in model:                    # dbm: layer 1, layer 2, joint
            model["pretrain_epochs"], train["epochs"] = 1, 3
        if "sample_steps" in model:
            model["sample_steps"] = 5
        out = {"train": train, "model": model}
        if "evaluate" in block:
            out["evaluate"] = {k: v if k == "raise_chains" else TINY_EVALUATE.get(k, v)
                               for k, v in block["evaluate"].items()}   # conv_rbm: no RAISE
        models[name] = out
    return {"datasets": {"fashion_mnist": dict(config["datasets"]["fashion_mnist"],
                                               max_train=500, max_val=100, max_test=100)},
            "evaluate": TINY_EVALUATE, "models": models}


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist "
                    "not installed: apt-get install dataset-fashion-mnist")
def test_fashion_profile_end_to_end_on_a_slice(tmp_path):
    path = make_project(tmp_path / "proj", yaml.safe_load((ROOT / "params.yaml").read_text()))
    config = P.read_yaml(CONFIG)
    (path / "configs" / "fashion-slice.yaml").write_text(
        yaml.safe_dump(slice_override(config), sort_keys=False))
    files = ["configs/fashion.yaml", "configs/fashion-slice.yaml"]
    run(["snakemake", "--cores", "2", "--configfile", *files], path, timeout=1800)

    params = P.load([path / "params.yaml", *(path / f for f in files)])
    report_dir = path / str(params.get("report_dir", "reports"))
    splits = load_splits(path / "data/processed/fashion_mnist.npz")
    assert [len(splits.x[s]) for s in SPLITS] == [500, 100, 100]
    draw = splits.info["binarization"]
    assert draw["seed"] == config["datasets"]["fashion_mnist"]["binarization_seed"]
    for run_ in params["runs"]:
        d = path / "results/fashion_mnist" / run_["model"] / "seed0"
        ev = json.loads((d / "eval.json").read_text())
        assert np.isfinite(ev["test_log_likelihood"]["mean"]), run_["model"]
        per_example = run_["model"] in PER_EXAMPLE_COST   # scored on the test subset
        assert ev["test_log_likelihood"]["n"] == (40 if per_example else 100), run_["model"]
        for stage in ("train.json", "eval.json"):
            cost = json.loads((d / stage).read_text()).get("cost")
            assert cost is None or {"wall_seconds", "cpu_seconds", "peak_rss_mb"} <= set(cost)

    md = (report_dir / "report.md").read_text()
    facts = md[md.index("## Run facts"):]
    assert "| fashion_mnist | 500 | 100 | 100 | 784 (28x28) |" in facts
    assert f"seed {draw['seed']}" in facts and draw["sha256"] in facts
    assert "| ais_betas | 50 |" in facts and "| parzen_samples | 200 |" in facts
    assert all(f"| fashion_mnist | {r['model']} |" in facts for r in params["runs"])
    cost = md[md.index("## Cost per stage"):]
    rows = [line for line in cost.splitlines() if line.startswith("| fashion_mnist |")]
    assert len(rows) == 2 * len(params["runs"])        # a train and an evaluate row per run
    assert re.search(r"^\| total \|", cost, re.M)
    html = (report_dir / "report.html").read_text()
    assert "Cost per stage" in html and "Run facts" in html


def test_report_tables_show_a_dash_for_records_without_cost():
    from pipeline import tables
    rows = [{"dataset": "d", "model": "m", "seed": 0, "stage": "train",
             "cost": {"wall_seconds": 2.0, "cpu_seconds": 1.5, "peak_rss_mb": 300.0}},
            {"dataset": "d", "model": "m", "seed": 0, "stage": "evaluate", "cost": None},
            {"dataset": "d", "model": "n", "seed": 0, "stage": "train",
             "cost": {"wall_seconds": 3.0, "cpu_seconds": 2.5, "peak_rss_mb": 500.0}}]
    df = tables.cost_table(rows)
    assert list(df.columns) == ["dataset", "model", "seed", "stage", "wall [s]", "CPU [s]",
                                "peak RSS [MB]"]
    assert df.iloc[1]["wall [s]"] == tables.DASH
    total = df.iloc[-1]
    assert (total["dataset"], total["wall [s]"], total["CPU [s]"], total["peak RSS [MB]"]) == \
        ("total", "5.0", "4.0", "500.0")
    assert "2 of 3" in total["model"]
    budgets = tables.budget_table({"d/a": {"ais_betas": 100, "ais_convergence": [10, 30]},
                                   "d/b": {"ais_betas": 100, "ais_convergence": [10, 30]},
                                   "d/c": {"ais_betas": 7, "ais_convergence": []}})
    assert budgets.to_dict("records") == [
        {"setting": "ais_betas", "value": "100", "runs with another value": "d/c: 7"},
        {"setting": "ais_convergence", "value": "[10, 30]",
         "runs with another value": "d/c: [] (off)"}]


def test_a_report_rebuilt_keeps_the_reports_of_other_profiles(tmp_path, monkeypatch):
    """reports/fashion_mnist/ lives inside reports/: rebuilding the default report (which
    swaps reports/ whole) carries it over."""
    from pipeline import report, swap
    monkeypatch.chdir(tmp_path)
    nested = tmp_path / "reports" / "fashion_mnist"
    nested.mkdir(parents=True)
    (nested / "report.md").write_text("fashion\n")
    (tmp_path / "reports" / "old.md").write_text("old\n")
    with swap.building(Path("reports")) as out:
        (out / "report.md").write_text("default\n")
        report.keep_nested_reports(Path("reports"), out)
    assert (tmp_path / "reports/fashion_mnist/report.md").read_text() == "fashion\n"
    assert (tmp_path / "reports/report.md").read_text() == "default\n"
    assert not (tmp_path / "reports/old.md").exists()
    for bad in ("/tmp/x", "reports/../x", "results/x", "reports/a.building", "", 3):
        with pytest.raises(ConfigError, match="report_dir"):
            P.report_dir({"report_dir": bad})
    assert P.report_dir({}) == Path("reports")
    assert P.report_dir({"report_dir": "reports/fashion_mnist"}) == nested.relative_to(
        tmp_path)
