"""The committed report is the output of the committed code, params and data.

A change that moves a number must regenerate reports/ in the same change: this test recomputes
the report's provenance fingerprint from the tree (every source file each stage runs, the
merged params.yaml, the prepared data's checksums) and compares it with the one the committed
report recorded (reports/metrics.json)."""
import json

import pytest

from conftest import ROOT
from gm.data import dataset_spec
from gm.data.fashion_mnist import DEBIAN_DIR
from pipeline import params as P
from pipeline import provenance


PROFILES = {   # committed report folder -> the params files that made it
    "reports": ["params.yaml"],
    "reports/fashion_mnist": ["params.yaml", "configs/fashion.yaml"],
}


def tree_fingerprint(tmp_path, files=("params.yaml",)) -> dict:
    params = P.load([ROOT / f for f in files])
    checksums = {}
    for ds in sorted({d for d, _, _ in P.runs(params)}):
        spec, raw = dataset_spec(ds), tmp_path / ds
        spec.fetch(raw)
        checksums[ds] = spec.prepare(raw, **(params["datasets"][ds] or {})).checksum()
    return provenance.report_fingerprint(params, checksums)


@pytest.mark.parametrize("folder", PROFILES)
def test_committed_report_matches_the_tree(folder, tmp_path, monkeypatch):
    metrics = ROOT / folder / "metrics.json"
    if not metrics.exists():
        pytest.skip(f"no committed report in {folder}/ in this checkout")
    files = PROFILES[folder]
    params = P.load([ROOT / f for f in files])
    assert str(P.report_dir(params)) == folder
    if "fashion_mnist" in params["datasets"] and not DEBIAN_DIR.is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    monkeypatch.chdir(ROOT)
    recorded = json.loads(metrics.read_text())["fingerprint"]
    expected = tree_fingerprint(tmp_path, files)
    stale = [part for part in ("code", "params", "data") if recorded[part] != expected[part]]
    flags = " ".join(f"--configfile {f}" for f in files[1:])
    assert not stale, (f"{folder}/ was made from other {', '.join(stale)} than this tree: "
                       f"rerun `snakemake --cores 8 {flags}`".rstrip() + f" and commit {folder}/ "
                       "with the change")
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
