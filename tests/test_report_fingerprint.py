"""The committed report is the output of the committed code, params and data.

A change that moves a number must regenerate reports/ in the same change: this test recomputes
the report's provenance fingerprint from the tree (every source file each stage runs, the
merged params.yaml, the prepared data's checksums) and compares it with the one the committed
report recorded (reports/metrics.json)."""
import json

import pytest

from conftest import ROOT
from gm.data import dataset_spec
from pipeline import params as P
from pipeline import provenance


def tree_fingerprint(tmp_path) -> dict:
    params = P.load(ROOT / "params.yaml")
    checksums = {}
    for ds in sorted({d for d, _, _ in P.runs(params)}):
        spec, raw = dataset_spec(ds), tmp_path / ds
        spec.fetch(raw)
        checksums[ds] = spec.prepare(raw, **(params["datasets"][ds] or {})).checksum()
    return provenance.report_fingerprint(params, checksums)


def test_committed_report_matches_the_tree(tmp_path, monkeypatch):
    metrics = ROOT / "reports" / "metrics.json"
    if not metrics.exists():
        pytest.skip("no committed report in this checkout")
    monkeypatch.chdir(ROOT)
    recorded = json.loads(metrics.read_text())["fingerprint"]
    expected = tree_fingerprint(tmp_path)
    stale = [part for part in ("code", "params", "data") if recorded[part] != expected[part]]
    assert not stale, (f"reports/ was made from other {', '.join(stale)} than this tree: rerun "
                       "`snakemake --cores 8` and commit reports/ with the change")
    assert recorded["sha256"] == expected["sha256"]


def test_the_fingerprint_moves_with_code_params_and_data(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = P.load(ROOT / "params.yaml")
    base = provenance.report_fingerprint(params, {"digits": "a"})
    other = dict(params, seed=params["seed"] + 1)
    assert provenance.report_fingerprint(other, {"digits": "a"})["params"] != base["params"]
    assert provenance.report_fingerprint(params, {"digits": "b"})["data"] != base["data"]
    reordered = {k: params[k] for k in reversed(params)}
    assert provenance.report_fingerprint(reordered, {"digits": "a"}) == base
