"""Code as an input: the files a stage runs for a model, read from its imports."""
import json
import subprocess
import sys

import gm
from conftest import ROOT
from pipeline import code


def names(stage, model=None) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in code.stage_paths(stage, model)}


def test_every_registered_model_has_its_file_found_without_importing_it():
    assert set(code.registrations()) == set(gm.model_names())


def test_every_dataset_has_its_module_found_and_prepare_depends_on_it_alone():
    from gm.data.registry import dataset_names
    assert set(code.dataset_registrations()) == set(dataset_names())
    digits = {str(p.relative_to(ROOT)) for p in code.stage_paths("prepare", dataset="digits")}
    assert {"gm/data/digits.py", "pipeline/prepare.py", "gm/data/splits.py"} <= digits
    assert "gm/data/mnist.py" not in digits
    assert "gm/metrics/classifier.py" in names("classifier")


def test_a_model_depends_on_its_bases_and_estimators_not_on_other_models():
    rbm = names("train", "rbm")
    assert {"gm/models/energy/rbm.py", "gm/models/energy/base.py", "gm/base.py",
            "pipeline/train.py", "pipeline/checkpoint.py"} <= rbm
    assert not any(f.startswith(("gm/models/autoregressive/", "gm/models/chains/")) for f in rbm)
    nade = names("evaluate", "nade")
    assert "gm/models/autoregressive/nade.py" in nade and "pipeline/evaluate.py" in nade
    assert not any(f.startswith("gm/models/energy/") for f in nade)
    # a shared estimator is an input of exactly the models that import it
    users = {m for m in gm.model_names() if "gm/estimators/importance.py" in names("evaluate", m)}
    assert {"vae", "sbn", "dbn"} <= users and "nade" not in users and "rbm" not in users


def test_imports_inside_functions_are_followed(tmp_path):
    # pipeline/params.py imports pipeline/memory.py inside a function; the registry imports
    # models by name at run time, which is not an edge
    assert "pipeline/memory.py" in names("train", "rbm")
    assert "gm/registry.py" in names("train", "rbm")
    assert "gm/models/energy/dbm.py" not in names("train", "rbm")


def test_the_stage_writes_a_fingerprint_that_moves_with_the_bytes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.code", "--stage", "train", "--model",
                          "nade"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    record = json.loads((ROOT / "results/code/nade.train.json").read_text())
    assert record["registered"] == "nade" and "gm/models/autoregressive/nade.py" in record["files"]
    paths = code.stage_paths("train", "nade")
    again = code.fingerprint(paths)
    assert again == {k: record[k] for k in ("files", "sha256")}
    assert code.fingerprint(paths[:-1])["sha256"] != again["sha256"]
