"""params.yaml validation: one clear error naming the field, before any work starts."""
import copy
import json

import pytest
import yaml

from gm.errors import ConfigError
from pipeline import params as P
from conftest import ROOT, run, tiny_params


def test_default_params_are_valid():
    P.load(ROOT / "params.yaml")


@pytest.mark.parametrize("edit, field", [
    (lambda p: p["models"].__setitem__("nosuch", {}), "models.nosuch"),
    (lambda p: p["datasets"].__setitem__("nosuch", {}), "datasets.nosuch"),
    (lambda p: p.__setitem__("colour", 1), "colour"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("n_hiden", 3), "models.rbm.model.n_hiden"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("n_hidden", "many"), "models.rbm.model.n_hidden"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("n_hidden", 0), "models.rbm.model.n_hidden"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("lr", -1.0), "models.rbm.model.lr"),
    (lambda p: p["models"]["rbm"]["train"].__setitem__("epochs", 0), "models.rbm.train.epochs"),
    (lambda p: p["models"]["rbm"]["train"].pop("batch_size"), "models.rbm.train.batch_size"),
    (lambda p: p["evaluate"].__setitem__("ais_chains", 0), "evaluate.ais_chains"),
    (lambda p: p["evaluate"].__setitem__("ais_schedule", "cubic"), "evaluate.ais_schedule"),
    (lambda p: p.__setitem__("seeds", [0, 0]), "seeds"),
    (lambda p: p.__setitem__("seed", -1), "seed"),
    (lambda p: p.__setitem__("device", "tpu"), "device"),
    (lambda p: p["runs"].append({"dataset": "digits", "model": "rbm"}), "runs[1].dataset"),
    (lambda p: p["models"].__setitem__("rbm_cd3", {"base": "nosuch"}), "models.rbm_cd3.base"),
    (lambda p: p["models"]["rbm"].__setitem__("base", "rbm"), "models.rbm.base"),
    (lambda p: p["models"].__setitem__("rbm_cd3", {"base": "rbm", "train": {
        "epochs": 1, "batch_size": 5}, "model": {"cd_k": 0}}), "models.rbm_cd3.model.cd_k"),
    (lambda p: p["models"].__setitem__("rbm_cd3", {"base": "rbm", "train": {
        "epochs": 1, "batch_size": 5}, "model": {"iwae_k": 5}}), "models.rbm_cd3.model.iwae_k"),
])
def test_bad_params_name_the_field(edit, field):
    p = copy.deepcopy(tiny_params())
    edit(p)
    with pytest.raises(ConfigError) as err:
        P.validate(p)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_stage_cli_reports_bad_params_and_does_no_work(tmp_path):
    p = tiny_params()
    p["models"]["rbm"]["model"]["n_hidden"] = -3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = run(["python", "-m", "pipeline.train", "--dataset", "bars_stripes", "--model", "rbm",
             "--seed", "0"], tmp_path, check=False)
    assert r.returncode == 2
    assert "models.rbm.model.n_hidden: must be >= 1, got -3" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


def test_train_prefixes_a_model_config_error_with_its_params_path(monkeypatch):
    """gm names only the field; the pipeline adds where in params.yaml it is set."""
    import gm
    from pipeline import train

    def build(name, data_dim, **hparams):
        raise ConfigError("upsamplings", "image side 4 is not divisible by 2^3", "lower upsamplings")
    monkeypatch.setattr(gm, "build", build)
    with pytest.raises(ConfigError) as err:
        train.build_model("dcgan", "dcgan_deep", 16, {"upsamplings": 3})
    assert str(err.value) == ("models.dcgan_deep.model.upsamplings: image side 4 is not "
                              "divisible by 2^3 (lower upsamplings)")


def test_a_data_dependent_model_error_names_its_params_path(tmp_path):
    """dcgan's upsamplings can only be checked against the data's image side, in train."""
    p = tiny_params()
    p["models"]["dcgan"] = {"train": {"epochs": 1, "batch_size": 50},
                            "model": {"upsamplings": 3}}
    p["runs"] = [{"dataset": "bars_stripes", "model": "dcgan"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    for stage in ("fetch", "prepare"):
        run(["python", "-m", f"pipeline.{stage}", "--dataset", "bars_stripes"], tmp_path)
    r = run(["python", "-m", "pipeline.train", "--dataset", "bars_stripes", "--model", "dcgan",
             "--seed", "0"], tmp_path, check=False)
    assert r.returncode == 2, r.stderr
    assert "error: params.yaml: models.dcgan.model.upsamplings: image side 4" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr


def test_snakemake_validates_before_running(project):
    p = tiny_params()
    p["evaluate"]["ais_betas"] = 0
    path = project(p)
    r = run(["snakemake", "--cores", "1"], path, check=False)
    assert r.returncode != 0
    assert "evaluate.ais_betas: must be >= 1, got 0" in r.stdout + r.stderr
    assert not (path / "data").exists()


def test_configfiles_merge_like_snakemake():
    """Mappings merge key by key, lists replace (what `snakemake --configfile` does)."""
    merged = P.load([ROOT / "params.yaml", ROOT / "configs" / "paper-cpu.yaml"])
    cpu = yaml.safe_load((ROOT / "configs" / "paper-cpu.yaml").read_text())
    assert merged["runs"] == cpu["runs"]
    assert set(merged["models"]) >= set(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])


def test_paper_profile_is_valid():
    P.load([ROOT / "params.yaml", ROOT / "configs" / "paper.yaml"])


def test_default_experiment_runs_every_registered_model():
    from gm import model_names
    params = P.load(ROOT / "params.yaml")
    assert {r["model"] for r in params["runs"]} == set(model_names())


def test_a_variant_is_a_registered_model_under_its_own_name(tmp_path):
    """models.rbm_cd3 with base: rbm trains and evaluates as an RBM with cd_k=3, in its own
    results folder, beside the plain rbm."""
    p = tiny_params()
    p["models"]["rbm_cd3"] = {"base": "rbm", "train": {"epochs": 2, "batch_size": 50},
                              "model": {"n_hidden": 8, "cd_k": 3}}
    p["runs"].append({"dataset": "bars_stripes", "model": "rbm_cd3"})
    assert P.registered_model(P.validate(p), "rbm_cd3") == "rbm"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    for stage in ("fetch", "prepare"):
        run(["python", "-m", f"pipeline.{stage}", "--dataset", "bars_stripes"], tmp_path)
    run(["python", "-m", "pipeline.classifier", "--dataset", "bars_stripes"], tmp_path)
    args = ["--dataset", "bars_stripes", "--model", "rbm_cd3", "--seed", "0"]
    run(["python", "-m", "pipeline.train", *args], tmp_path)
    run(["python", "-m", "pipeline.evaluate", *args], tmp_path)
    out = tmp_path / "results/bars_stripes/rbm_cd3/seed0"
    ev = json.loads((out / "eval.json").read_text())
    assert ev["model"] == "rbm_cd3" and ev["test_log_likelihood"]["kind"] == "exact"
    import torch
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["model"] == "rbm" and state["config"]["cd_k"] == 3
