"""SLURM requests per model (issue 17): params ``resources:`` -> each train/evaluate job.

The dry runs use the README's cluster command, ``snakemake -n --profile profiles/slurm
--configfile configs/paper.yaml``, in a scratch copy of the project (no cluster needed: a dry
run submits nothing) and read every job's resources from its output.  The expected requests
are computed here from the params files themselves, by the rule the README states (a run
name's own entry, else its base's, else ``resources.<stage>``, else 120/60 min, 4000 MB and a
GPU exactly for ``device: cuda``), not copied from the code under test.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_project, run, tiny_params

from gm.errors import ConfigError
from pipeline import params as P
from pipeline import provenance

BUILTIN = {"train": {"runtime": 120, "mem_mb": 4000}, "evaluate": {"runtime": 60, "mem_mb": 4000}}


# --- what the params imply (written out independently of pipeline/params.py) ------------------
def implied(params: dict, name: str, stage: str) -> dict[str, int]:
    res = params.get("resources") or {}
    base = params["models"][name].get("base", name)
    layers = [((res.get("models") or {}).get(n) or {}).get(stage) or {} for n in (name, base)]
    layers.append(res.get(stage) or {})
    cuda = str(params.get("device", "auto")).startswith("cuda")
    default = BUILTIN[stage] | {"gpus": int(cuda)}
    return {f: next((layer[f] for layer in layers if f in layer), default[f])
            for f in ("runtime", "mem_mb", "gpus")}


def merged(*files) -> dict:
    out: dict = {}
    for f in files:
        out = P.merge(out, yaml.safe_load(Path(f).read_text()))
    return out


# --- dry runs ---------------------------------------------------------------------------------
def scratch(tmp_path: Path, params_file: Path = ROOT / "params.yaml") -> Path:
    proj = make_project(tmp_path / "proj", {})
    shutil.copy(params_file, proj / "params.yaml")
    shutil.copytree(ROOT / "profiles", proj / "profiles")
    return proj


def planned_jobs(proj: Path, *args: str) -> list[tuple[str, dict, dict]]:
    """(rule, wildcards, resources) of every job of ``snakemake -n --profile profiles/slurm``."""
    out = run(["timeout", "-k", "30", "300", "snakemake", "-n", "--profile", "profiles/slurm",
               *args], proj, timeout=400)
    text = out.stdout + out.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        res = re.search(r"^    resources: (.*)$", block, flags=re.M)
        if not head or not res:
            continue
        wc = re.search(r"^    wildcards: (.*)$", block, flags=re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((head.group(1), wildcards, dict(kv.split("=", 1) for kv in res.group(1).split(", "))))
    assert jobs, text[-3000:]
    return jobs


def test_paper_profile_asks_each_model_for_its_gpu_runtime_and_memory(tmp_path):
    proj = scratch(tmp_path)
    jobs = planned_jobs(proj, "--configfile", "configs/paper.yaml")
    params = merged(proj / "params.yaml", proj / "configs/paper.yaml")
    expected_runs = {(r["dataset"], r["model"]) for r in params["runs"]}
    seen = {"train": set(), "evaluate": set()}
    for rule, wc, res in jobs:
        if rule not in seen:
            assert int(res.get("gpu", 0)) == 0, f"{rule} is not a GPU job: {res}"
            continue
        want = implied(params, wc["model"], rule)
        assert want["gpus"] >= 1, f"configs/paper.yaml gives {rule} of {wc['model']} no GPU"
        got = {"gpus": int(res.get("gpu", 0)), "runtime": int(res["runtime"]),
               "mem_mb": int(res["mem_mb"])}
        assert got == want, f"{rule} {wc}: asks {got}, params imply {want}"
        assert want == P.stage_resources(P.validate(copy.deepcopy(params)), wc["model"], rule)
        seen[rule].add((wc["dataset"], wc["model"]))
    assert seen["train"] == seen["evaluate"] == expected_runs
    # sized per model, not one flat limit: the paper's 3,280-epoch VAE gets more than the old
    # flat 120 minutes, and the runtimes differ from model to model
    assert implied(params, "vae", "train")["runtime"] > 120
    runtimes = {implied(params, m, "train")["runtime"] for _, m in expected_runs}
    assert len(runtimes) > len(expected_runs) // 2


def test_default_cpu_params_ask_for_no_gpu_and_the_old_limits(tmp_path):
    proj = scratch(tmp_path)
    params = merged(proj / "params.yaml")
    assert str(params.get("device", "auto")) == "auto" and "resources" not in params
    jobs = planned_jobs(proj)
    stages = [(rule, res) for rule, _, res in jobs if rule in BUILTIN]
    assert len(stages) == 2 * len(P.runs(params))
    for rule, _, res in jobs:
        assert int(res.get("gpu", 0)) == 0, f"{rule}: {res}"
    for rule, res in stages:
        assert (int(res["runtime"]), int(res["mem_mb"])) == (BUILTIN[rule]["runtime"],
                                                             BUILTIN[rule]["mem_mb"])


def test_bad_resources_stop_snakemake_with_one_line(tmp_path):
    proj = scratch(tmp_path)
    bad = re.sub(r"(?m)^resources:\n", "resources:\n  colour: blue\n",
                 (proj / "configs/paper.yaml").read_text(), count=1)
    assert "colour" in bad
    (proj / "configs/paper.yaml").write_text(bad)
    proc = run(["snakemake", "-n", "--profile", "profiles/slurm", "--configfile",
                "configs/paper.yaml"], proj, check=False)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    errors = [line for line in out if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode != 0 and len(errors) == 1 and errors[0] == out[-1], out
    assert re.match(r"error: params\.yaml\+\S*configs/paper\.yaml: resources\.colour: unknown "
                    r"key \(known: train, evaluate, models", errors[0]), out
    assert not (proj / "data").exists() and not (proj / "results").exists()


# --- validation -------------------------------------------------------------------------------
def params_with(resources, device="auto", **models) -> dict:
    p = tiny_params(**models) if models else tiny_params()
    p["device"] = device
    p["models"]["rbm_cd3"] = {"base": "rbm", "train": {"epochs": 1, "batch_size": 5},
                              "model": {"cd_k": 3}}
    if resources is not None:
        p["resources"] = resources
    return p


@pytest.mark.parametrize("resources, device, field, fix", [
    ({"train": {"runtime": 0}}, "auto", "resources.train.runtime: must be an integer >= 1, got 0",
     "runtime: the number of minutes"),
    ({"evaluate": {"mem_mb": -5}}, "auto", "resources.evaluate.mem_mb: must be an integer >= 1",
     "MB of memory"),
    ({"train": {"runtime": 90.5}}, "auto", "resources.train.runtime: must be an integer >= 1, got 90.5", ""),
    ({"train": {"runtime": "2h"}}, "auto", "resources.train.runtime: must be an integer", ""),
    ({"train": {"gpus": -1}}, "auto", "resources.train.gpus: must be an integer >= 0", ""),
    ({"train": {"gpus": True}}, "auto", "resources.train.gpus: must be an integer >= 0", ""),
    ({"train": {"time": 5}}, "auto", "resources.train.time: unknown key (known: gpus, mem_mb, runtime)", ""),
    ({"report": {"runtime": 5}}, "auto", "resources.report: unknown key", "--set-resources"),
    ({"train": [1]}, "auto", "resources.train: expected a mapping", ""),
    ("lots", "auto", "resources: expected a mapping", ""),
    ({"models": {"nosuch": {"train": {"runtime": 5}}}}, "auto",
     "resources.models.nosuch: 'nosuch' has no block under models:", ""),
    ({"models": {"rbm": {"fit": {"runtime": 5}}}}, "auto",
     "resources.models.rbm.fit: unknown key (known: train, evaluate)", ""),
    ({"models": {"rbm": {"train": {"runtime": 0}}}}, "auto",
     "resources.models.rbm.train.runtime: must be an integer >= 1", ""),
    ({"models": {"rbm": {"evaluate": {"gpus": 1}}}}, "cpu",
     "resources.models.rbm.evaluate.gpus: 1 GPU(s) requested but device: cpu", "device: auto"),
    ({"train": {"gpus": 0}}, "cuda", "resources.train.gpus: 0 GPUs requested but device: cuda",
     "gpus: 1"),
])
def test_bad_resources_name_the_field_and_the_fix(resources, device, field, fix):
    with pytest.raises(ConfigError) as err:
        P.validate(params_with(resources, device))
    line = P.error_line(err.value, ["params.yaml"])
    assert line.startswith("error: params.yaml: " + field), line
    assert fix in line and "\n" not in line


def test_resolution_model_then_base_then_defaults():
    p = P.validate(params_with({"train": {"runtime": 30}, "evaluate": {"gpus": 1},
                                "models": {"rbm": {"train": {"runtime": 300, "mem_mb": 6000}},
                                           "rbm_cd3": {"train": {"mem_mb": 8000}}}}))
    assert P.stage_resources(p, "rbm", "train") == {"runtime": 300, "mem_mb": 6000, "gpus": 0}
    # a variant inherits its base's entry field by field unless it sets its own
    assert P.stage_resources(p, "rbm_cd3", "train") == {"runtime": 300, "mem_mb": 8000, "gpus": 0}
    assert P.stage_resources(p, "rbm", "evaluate") == {"runtime": 60, "mem_mb": 4000, "gpus": 1}
    for name in ("rbm", "rbm_cd3"):
        for stage in BUILTIN:
            assert P.stage_resources(p, name, stage) == implied(p, name, stage)


@pytest.mark.parametrize("device, gpus", [("auto", 0), ("cpu", 0), ("cuda", 1), ("cuda:1", 1)])
def test_builtin_defaults_are_the_old_values(device, gpus):
    p = P.validate(params_with(None, device))
    assert P.stage_resources(p, "rbm", "train") == {"runtime": 120, "mem_mb": 4000, "gpus": gpus}
    assert P.stage_resources(p, "rbm", "evaluate") == {"runtime": 60, "mem_mb": 4000, "gpus": gpus}


def test_resources_are_no_rerun_trigger():
    """Changing resources changes nothing a stage depends on: not the Snakefile's params (train
    settings, evaluate settings), not the recorded fingerprints, not a param DVC tracks."""
    a = P.validate(params_with(None))
    b = P.validate(params_with({"train": {"runtime": 999, "mem_mb": 9999},
                                "models": {"rbm": {"evaluate": {"runtime": 7}}}}))
    for name in ("rbm", "rbm_cd3"):
        assert P.canonical(P.train_settings(a, name, "bars_stripes")) == P.canonical(P.train_settings(b, name, "bars_stripes"))
        assert P.canonical(P.evaluate_settings(a, name)) == P.canonical(P.evaluate_settings(b, name))
        assert P.evaluate_config(a, name) == P.evaluate_config(b, name)
        assert (provenance.digest(provenance.train_params(a, "bars_stripes", name, 0))
                == provenance.digest(provenance.train_params(b, "bars_stripes", name, 0)))
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    tracked = [p for stage in dvc["stages"].values()
               for p in (stage.get("do", stage).get("params") or [])]
    assert tracked and not any(str(p).split(".")[0] == "resources" for p in tracked), tracked


def test_paper_configs_validate_with_their_resources():
    paper = P.load([ROOT / "params.yaml", ROOT / "configs/paper.yaml"])
    for _, name, _ in P.runs(paper):
        for stage in BUILTIN:
            assert P.stage_resources(paper, name, stage)["gpus"] >= 1
    cpu = P.load([ROOT / "params.yaml", ROOT / "configs/paper-cpu.yaml"])
    for _, name, _ in P.runs(cpu):
        assert P.stage_resources(cpu, name, "train")["gpus"] == 0


# --- scripts/derive_resources.py: the formula on a synthetic results tree ---------------------
def _derive_module():
    spec = importlib.util.spec_from_file_location("derive_resources",
                                                  ROOT / "scripts/derive_resources.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


D = _derive_module()

MEASURED = {
    "seed": 1, "seeds": [0, 1], "device": "auto",
    "datasets": {"fashion_mnist": {"max_train": 2000, "max_val": 500, "max_test": 500}},
    "evaluate": {"ais_chains": 16, "ais_betas": 300, "raise_chains": 1, "importance_samples": 100,
                 "parzen_samples": 1000, "n_samples": 200, "ais_convergence": [10, 100]},
    "runs": [{"dataset": "fashion_mnist", "model": "rbm"},
             {"dataset": "fashion_mnist", "model": "vae"},
             {"dataset": "fashion_mnist", "model": "iwae_k5"}],
    "models": {"rbm": {"train": {"epochs": 5, "batch_size": 100}, "model": {"n_hidden": 100}},
               "vae": {"train": {"epochs": 4, "batch_size": 100}, "model": {}},
               "iwae_k5": {"base": "vae", "train": {"epochs": 4, "batch_size": 100},
                           "model": {"iwae_k": 5}}},
}
TARGET = {
    "seed": 1, "seeds": [0], "device": "auto",
    "datasets": {"mnist": {}, "binarized_mnist": {}},
    "evaluate": {"ais_chains": 100, "ais_betas": 14500, "raise_chains": 1,
                 "importance_samples": 5000, "parzen_samples": 10000, "n_samples": 10000,
                 "ais_convergence": [10, 100, 1000]},
    "runs": [{"dataset": "binarized_mnist", "model": "rbm"},
             {"dataset": "binarized_mnist", "model": "rbm_cd1"},
             {"dataset": "mnist", "model": "vae"},
             {"dataset": "mnist", "model": "iwae_k5"},
             {"dataset": "mnist", "model": "gan"}],
    "models": {"rbm": {"train": {"epochs": 500, "batch_size": 100}, "model": {"n_hidden": 100}},
               "rbm_cd1": {"base": "rbm", "train": {"epochs": 50, "batch_size": 100},
                           "model": {"n_hidden": 100, "cd_k": 1}},
               "vae": {"train": {"epochs": 3280, "batch_size": 100}, "model": {}},
               "iwae_k5": {"base": "vae", "train": {"epochs": 3280, "batch_size": 100},
                           "model": {"iwae_k": 5}},
               "gan": {"train": {"epochs": 300, "batch_size": 100}, "model": {}}},
}


def write_run(results: Path, model: str, seed: int, *, epochs: int, train_cost: dict,
              method: str, n_test: int, eval_cost: dict, budget: dict, resumed: int = 0):
    folder = results / "fashion_mnist" / model / f"seed{seed}"
    folder.mkdir(parents=True)
    history = [{"epoch": e, "loss": 1.0} for e in range(1, epochs + 1)]
    (folder / "train.json").write_text(json.dumps({
        "model": model, "epochs": epochs, "history": history, "resumed_from_epoch": resumed,
        "cost": train_cost}))
    (folder / "eval.json").write_text(json.dumps({
        "model": model, "test_log_likelihood": {"method": method, "n": n_test, "mean": -90.0},
        "budget": budget, "cost": eval_cost}))


def measured_tree(tmp_path: Path) -> Path:
    results = tmp_path / "measured" / "results"
    budget = {k: v for k, v in MEASURED["evaluate"].items()}
    cost = lambda wall, rss: {"wall_seconds": wall, "cpu_seconds": wall, "peak_rss_mb": rss}
    write_run(results, "rbm", 0, epochs=5, train_cost=cost(60.0, 500.0), method="ais",
              n_test=500, eval_cost=cost(30.0, 600.0), budget=budget)
    # seed 1 resumed at epoch 3: its cost covers 2 epochs, and is the slower measurement
    write_run(results, "rbm", 1, epochs=5, train_cost=cost(30.0, 450.0), method="ais",
              n_test=500, eval_cost=cost(20.0, 550.0), budget=budget, resumed=3)
    for seed in (0, 1):
        write_run(results, "vae", seed, epochs=4, train_cost=cost(12.0, 400.0), method="iwae",
                  n_test=500, eval_cost=cost(6.0, 3000.0), budget=budget)
    write_run(results, "iwae_k5", 0, epochs=4, train_cost=cost(40.0, 400.0), method="iwae",
              n_test=500, eval_cost=cost(1.0, 1.0), budget=budget)
    (results / "fashion_mnist/iwae_k5/seed0/eval.json").unlink()      # killed before evaluate
    return results


def test_derived_runtimes_and_memory_follow_the_documented_formula(tmp_path):
    results = measured_tree(tmp_path)
    notes: list[str] = []
    out = D.derive(P.validate(copy.deepcopy(MEASURED)), results, P.validate(copy.deepcopy(TARGET)),
                   notes=notes)
    # data (x_ and r_ views, float32, 784 pixels): measured 2000+500+500, target 50k+10k+10k
    growth = (70000 - 3000) * 784 * 8 / 2 ** 20
    up = lambda minutes: max(10, math.ceil(minutes))
    mem = lambda rss: max(2000, 500 * math.ceil((rss + growth) * 2 / 500))
    # rbm train: seed 1 trained 2 epochs in 30 s (15 s/epoch) > seed 0's 12 s/epoch
    assert out["rbm"]["train"] == {"runtime": up(30 / 60 * (500 / 2) * (50000 / 2000) * 2),
                                   "mem_mb": mem(500.0)}
    # rbm evaluate (AIS + RAISE): the largest ratio is test x RAISE chains x distributions
    raise_ratio = (10000 * 1 * 14500) / (500 * 1 * 300)
    assert raise_ratio > max(100 * 14500 / (16 * 300), 10000 / 500, 10000 / 200)
    assert out["rbm"]["evaluate"] == {"runtime": up(30 / 60 * raise_ratio * 2), "mem_mb": mem(600.0)}
    # a variant without a measurement of its own uses its base's, with its own epochs
    assert out["rbm_cd1"]["train"]["runtime"] == up(30 / 60 * (50 / 2) * 25 * 2)
    assert "rbm_cd1: measured rbm with other settings (model.cd_k: (unset) -> 1)" in " ".join(notes)
    # vae (importance sampling): test x importance samples
    assert out["vae"]["train"] == {"runtime": up(12 / 60 * (3280 / 4) * 25 * 2), "mem_mb": mem(400.0)}
    assert out["vae"]["evaluate"]["runtime"] == up(6 / 60 * (10000 * 5000) / (500 * 100) * 2)
    assert "gan" not in out and "gan: no train measurement of gan: left as it is" in notes
    # a variant measured for train only: its own train cost, its base's evaluate cost
    assert out["iwae_k5"]["train"]["runtime"] == up(40 / 60 * (3280 / 4) * 25 * 2)
    assert out["iwae_k5"]["evaluate"] == out["vae"]["evaluate"]
    assert "iwae_k5: no evaluate measurement of iwae_k5 or of vae: left as it is" not in notes


def test_rounding_and_minimums():
    assert D.round_runtime(0.2) == 10 and D.round_runtime(10.0) == 10 and D.round_runtime(10.01) == 11
    assert D.round_mem(10) == 2000 and D.round_mem(2000) == 2000 and D.round_mem(2001) == 2500


def test_safety_and_gpu_speedup_scale_the_runtime(tmp_path):
    results = measured_tree(tmp_path)
    m, t = P.validate(copy.deepcopy(MEASURED)), P.validate(copy.deepcopy(TARGET))
    base = D.derive(m, results, t)["vae"]["train"]["runtime"]
    fast = D.derive(m, results, t, safety=1.0, gpu_speedup=4.0)["vae"]["train"]["runtime"]
    assert fast == math.ceil(12 / 60 * (3280 / 4) * 25 / 4) and base > 7 * fast


def test_write_replaces_only_the_resources_block_and_still_validates(tmp_path):
    results = measured_tree(tmp_path)
    for name, params in (("measured.yaml", MEASURED), ("target.yaml", TARGET)):
        (tmp_path / name).write_text(yaml.safe_dump(params, sort_keys=False))
    target = tmp_path / "target.yaml"
    original = target.read_text()
    text = original.replace("runs:", "# hand-set: kept\nresources:\n  models:\n    gan:\n"
                            "      train: {runtime: 77}\n\n# the runs\nruns:", 1)
    target.write_text(text)
    rc = D.main(["--measured", str(tmp_path / "measured.yaml"), "--results", str(results),
                 "--target", str(target), "--write", str(target)])
    assert rc == 0
    written = target.read_text()
    params = P.load(target)
    assert params["resources"]["models"]["gan"] == {"train": {"runtime": 77}}   # not measured
    assert params["resources"]["train"]["gpus"] == params["resources"]["evaluate"]["gpus"] == 1
    for name in ("rbm", "rbm_cd1", "vae", "iwae_k5"):
        assert P.stage_resources(params, name, "train")["runtime"] > 120
    assert "derived by scripts/derive_resources.py" in written and "# the runs\nruns:" in written
    assert "hand-set" not in written
    # everything but the block is as it was
    strip = lambda s: re.sub(r"(?m)^(?:#[^\n]*\n)*resources:\n(?:[ \t][^\n]*\n|\n)*", "", s)
    assert strip(written) == strip(text)
    # again, keeping a hand-set entry: still one block, that entry as it was
    derived_vae = params["resources"]["models"]["vae"]["train"]["runtime"]
    target.write_text(written.replace(f"    vae:\n      train: {{runtime: {derived_vae},",
                                      "    vae:\n      train: {runtime: 5,"))
    assert D.main(["--measured", str(tmp_path / "measured.yaml"), "--results", str(results),
                   "--target", str(target), "--write", str(target), "--keep", "vae.train"]) == 0
    again = target.read_text()
    assert again.count("resources:") == 1 and "--keep vae.train" in again
    kept = P.load(target)["resources"]["models"]
    assert kept["vae"]["train"]["runtime"] == 5
    assert kept["vae"]["evaluate"] == params["resources"]["models"]["vae"]["evaluate"]
    assert kept["rbm"] == params["resources"]["models"]["rbm"]


def test_calibration_params_keep_the_models_and_cut_epochs_data_and_budgets(tmp_path):
    target = P.load([ROOT / "params.yaml", ROOT / "configs/paper.yaml"])
    out = tmp_path / "calib.yaml"
    assert D.main(["--target", str(ROOT / "params.yaml"), str(ROOT / "configs/paper.yaml"),
                   "--calibration", str(out)]) == 0
    calib = P.load([ROOT / "params.yaml", out])
    names = {name for _, name, _ in P.runs(target)}
    assert {name for _, name, _ in P.runs(calib)} == names and calib["device"] == "cpu"
    for name in names:
        t, c = target["models"][name], calib["models"][name]
        assert c["model"].keys() == t["model"].keys() and c.get("base") == t.get("base")
        assert c["train"]["batch_size"] == t["train"]["batch_size"]
        assert 2 <= c["train"]["epochs"] <= max(2, t["train"]["epochs"] // 50)
        for key, value in c["model"].items():
            if not key.endswith("epochs"):
                assert value == t["model"][key], (name, key)
    assert calib["models"]["dbn"]["model"]["layer_epochs"] == [2, 2]
    assert calib["models"]["dbn"]["train"]["epochs"] == 4
    assert calib["models"]["dbm"]["model"]["pretrain_epochs"] == 1
    budget, full = P.evaluate_config(calib), P.evaluate_config(target)
    assert (budget.importance_samples, budget.ais_betas, budget.raise_chains, budget.parzen_samples) \
        == (full.importance_samples, full.ais_betas, full.raise_chains, full.parzen_samples)
    assert budget.ais_chains == 2 and budget.n_samples == 100
    # with this calibration every evaluate driver ratio is about the test-size factor
    assert yaml.safe_load(out.read_text())["datasets"] == {
        "fashion_mnist": {"max_train": 2000, "max_val": 500, "max_test": 100}}


def test_start_up_does_not_grow_with_epochs_and_data(tmp_path):
    """A record that splits its CPU (cost.compute_cpu_seconds, pipeline.common.process_cost):
    only the computation's share of the time is scaled."""
    results = tmp_path / "measured" / "results"
    cost = {"wall_seconds": 20.0, "cpu_seconds": 10.0, "peak_rss_mb": 300.0,
            "compute_cpu_seconds": 6.0}                       # 4 s of CPU start-up
    write_run(results, "vae", 0, epochs=4, train_cost=cost, method="iwae", n_test=500,
              eval_cost=cost, budget=MEASURED["evaluate"])
    measured = P.validate(copy.deepcopy(MEASURED) | {"seeds": [0], "runs": MEASURED["runs"][1:2]})
    out = D.derive(measured, results, P.validate(copy.deepcopy(TARGET)))
    ratio = (3280 / 4) * (50000 / 2000)
    assert out["vae"]["train"]["runtime"] == math.ceil(20 / 60 * (0.4 + 0.6 * ratio) * 2)
    assert D.scaled_share({"wall_seconds": 5.0}, 7.0) == 7.0     # no split: all of it grows


def test_per_example_drivers_count_only_the_test_subset():
    """RAISE, importance sampling and decoder AIS score budget test_subset examples (when set):
    their cost drivers count those, the other drivers the whole test split."""
    budget = {"ais_chains": 100, "ais_betas": 1000, "raise_chains": 2, "importance_samples": 50,
              "parzen_samples": 100, "decoder_ais_chains": 1, "decoder_ais_betas": 10,
              "decoder_ais_leapfrog": 2, "n_samples": 10}
    whole = D.drivers("ais", budget, 10000, 1000)
    cut = D.drivers("ais", budget | {"test_subset": 500}, 10000, 1000)
    assert whole["test x RAISE chains x distributions"] == 10000 * 2 * 1000
    assert cut["test x RAISE chains x distributions"] == 500 * 2 * 1000
    assert cut["test examples"] == whole["test examples"] == 10000
    iw = D.drivers("iwae", budget | {"test_subset": 500}, 10000, 1000)
    assert iw["test x importance samples"] == 500 * 50
    big = D.drivers("iwae", budget | {"test_subset": 50000}, 10000, 1000)   # larger than test
    assert big["test x importance samples"] == 10000 * 50
