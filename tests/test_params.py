"""params.yaml validation: one clear error naming the field, before any work starts."""
import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run, tiny_params

from gm.errors import ConfigError
from pipeline import memory as M
from pipeline import params as P


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


# --- strict reading: what the two runners would read differently is refused -------------------
@pytest.mark.parametrize("text, message", [
    ("seed: 1\nseed: 2\n", "params.yaml: line 2: seed is given twice (first on line 1) (keep one"),
    ("models:\n  rbm:\n    model: {n_hidden: 8, n_hidden: 9}\n",
     "params.yaml: line 3: models.rbm.model.n_hidden is given twice (first on line 3)"),
    ("runs:\n- {dataset: digits, model: rbm, model: nade}\n",
     "params.yaml: line 2: runs[0].model is given twice"),
    ("models:\n  rbm:\n    model:\n      lr: 1e-3\n",
     ("params.yaml: line 4: models.rbm.model.lr: 1e-3 is text to PyYAML (YAML 1.1: Snakemake, "
      "the stages) but a number to DVC (YAML 1.2) (write 1.0e-3)")),
    ("evaluate:\n  bandwidth: 5E2\n", "params.yaml: line 2: evaluate.bandwidth: 5E2 is text "),
])
def test_strict_reading_refuses_what_dvc_reads_otherwise(tmp_path, monkeypatch, text, message):
    """PyYAML keeps the last of two equal keys and reads 1e-3 as a string; DVC's YAML 1.2
    refuses the first and reads a float: both would make the runners disagree silently."""
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        P.read_yaml("params.yaml")
    assert str(err.value).startswith(message), str(err.value)
    # the file is named once, not prefixed again by the stage
    assert P.error_line(err.value, ["params.yaml"]).startswith("error: " + message)
    yaml.safe_load(text)   # what Snakemake does: no error


def test_strict_reading_keeps_valid_yaml(tmp_path):
    """Merge keys may override, quoted numbers stay text, YAML 1.1 floats are floats; every
    params file of the repository reads strictly as PyYAML reads it."""
    f = tmp_path / "p.yaml"
    f.write_text("base: &b {lr: 0.1, n: 2}\nrbm:\n  <<: *b\n  lr: 0.2\nq: '1e-3'\nr: 1.0e-3\n")
    assert P.read_yaml(f) == {"base": {"lr": 0.1, "n": 2}, "rbm": {"lr": 0.2, "n": 2},
                              "q": "1e-3", "r": 0.001}
    for path in [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        assert P.read_yaml(path) == yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["models"]["rbm"]["model"].__setitem__("lr", float("inf")),
     "models.rbm.model.lr: must be a finite number, got inf"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("lr", 1e300),
     "models.rbm.model.lr: 1e+300 overflows float32, the precision the models compute in"),
    (lambda p: p["models"]["rbm"]["model"].__setitem__("lr", 1e-50),
     "models.rbm.model.lr: 1e-50 underflows to 0 in float32"),
    (lambda p: p["evaluate"].__setitem__("parzen_samples", 2 ** 70),
     "evaluate.parzen_samples: 1180591620717411303424 does not fit in a 64-bit integer"),
    (lambda p: p["models"]["rbm"].__setitem__("nosuch", {"x": float("nan")}),
     "models.rbm.nosuch.x: must be a finite number, got nan"),
])
def test_numbers_must_be_finite_float32_and_64_bit(edit, message):
    """1e300 passes a float64 range check (lr > 0) and overflows in the first float32
    product; every number is checked, wherever it is, before the field's own rules."""
    p = copy.deepcopy(tiny_params())
    edit(p)
    with pytest.raises(ConfigError) as err:
        P.validate(p)
    assert str(err.value).startswith(message), str(err.value)


# --- memory: estimated on the meta device, compared with the machine's --------------------------
def test_memory_estimate_counts_parameters_without_allocating():
    import resource
    M.memory_estimate("rbm", 16, {"n_hidden": 8})          # warm up torch's meta kernels
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    need, n = M.memory_estimate("rbm", 784, {"n_hidden": 10 ** 9})
    assert n == 784 * 10 ** 9 + 784 + 10 ** 9                  # W, visible and hidden biases
    assert need >= M.TRAINING_COPIES * 4 * n                   # float32, x gradient and moments
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert grown_mb < 200, f"the estimate allocated {grown_mb:.0f} MB"
    assert M.memory_estimate("dcgan", 1, {"upsamplings": 3}) is None   # cannot fit 1x1 images


def test_machine_memory_is_the_ram_or_the_override(monkeypatch):
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    assert 0 < M.machine_memory() <= total_kb * 1024 + 2 ** 20
    monkeypatch.setenv("GM_MEMORY_GB", "2")
    assert M.machine_memory() == 2 * 2 ** 30


@pytest.mark.parametrize("model, block, message", [
    ("rbm", {"n_hidden": 10 ** 9}, ("models.rbm.model.n_hidden: 1000000000 needs at least "
                                    "29.8 GiB of memory to train on bars_stripes (2e+09 "
                                    "parameters")),
    ("dbn", {"hidden": [100000, 100000]}, ("models.dbn.model.hidden: [100000, 100000] needs "
                                           "at least 149 GiB")),
    ("diffusion", {"n_layers": 10 ** 6}, ("models.diffusion.model.n_layers: 1000000 is "
                                          "absurdly large: building the model alone (without "
                                          "its tensors) takes over 5 s")),
])
def test_absurd_sizes_are_refused_with_the_estimate(tmp_path, monkeypatch, model, block, message):
    """Before prepare the data dimension is unknown and taken as 1: a lower bound."""
    monkeypatch.chdir(tmp_path)                      # no data/processed here
    monkeypatch.setenv("GM_MEMORY_GB", "16")
    p = tiny_params()
    p["models"] = {model: {"train": {"epochs": 1, "batch_size": 10}, "model": block}}
    p["runs"] = [{"dataset": "bars_stripes", "model": model}]
    P.validate(p)                                    # valid, only too big
    with pytest.raises(ConfigError) as err:
        M.check_memory(p)
    assert str(err.value).startswith(message), str(err.value)
    if "GiB" in message:
        assert str(err.value).endswith("more than this machine's 16 GiB (lower it)")


def test_the_default_experiment_fits_and_validation_stays_light():
    """Validation at every stage start imports no torch._dynamo (the memory check, which
    does, runs in the train stage and the Snakefile only); the default runs fit in 16 GiB."""
    code = ("import sys\nfrom pipeline import params as P\nP.load('params.yaml')\n"
            "print('torch._dynamo' in sys.modules)")
    assert run(["python", "-c", code], ROOT).stdout.strip() == "False"
    import os
    os.environ["GM_MEMORY_GB"] = "16"
    try:
        M.check_memory(P.load(ROOT / "params.yaml"))
    finally:
        del os.environ["GM_MEMORY_GB"]


def test_a_loaded_machine_does_not_make_a_normal_model_absurd(monkeypatch, tmp_path):
    """The meta-build limit is CPU time after an untimed warm-up build: busy processes that
    stretch the wall clock (4 parallel stages outside Snakemake once refused rbm, dbm and fvsbn)
    change nothing."""
    import subprocess
    import sys
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path))     # an empty cache: every model builds
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        monkeypatch.setattr(M, "BUILD_SECONDS", 0.5)
        monkeypatch.setenv("GM_MEMORY_GB", "16")
        M._warm.cache_clear()
        M.check_memory(P.load(ROOT / "params.yaml"))
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_estimates_are_cached_by_settings_and_code(tmp_path, monkeypatch):
    """A second check of the same settings and code builds no model (in a fresh process:
    torch._dynamo, which the meta build imports, stays unloaded); other sizes, another data
    dimension or an edited source file of the model are estimated anew."""
    cache = tmp_path / "cache"
    code = ("import os, sys\nfrom pipeline import memory as M, params as P\n"
            "os.environ['GM_MEMORY_GB'] = '16'\nM.check_memory(P.load('params.yaml'))\n"
            "print('torch._dynamo' in sys.modules)")
    env = {"GM_CACHE_DIR": str(cache)}
    assert run(["python", "-c", code], ROOT, env=env).stdout.strip() == "True"
    assert run(["python", "-c", code], ROOT, env=env).stdout.strip() == "False"
    assert (cache / "memory-estimates.json").is_file()

    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path / "other"))
    key = M._cache_key("rbm", 64, {"n_hidden": 8})
    assert key == M._cache_key("rbm", 64, {"n_hidden": 8})
    assert key != M._cache_key("rbm", 64, {"n_hidden": 9})
    assert key != M._cache_key("rbm", 65, {"n_hidden": 8})
    copies = []   # two copies of a project's model source in other folders
    for name in ("a", "b"):
        src = tmp_path / name / "gm" / "models" / "rbm.py"
        src.parent.mkdir(parents=True)
        src.write_text("x = 1\n")
        copies.append(src)
    keys = []
    for src in copies + copies[:1]:
        monkeypatch.setattr(M.code, "package_root", lambda package, root=src.parents[2]: root)
        monkeypatch.setattr(M.code, "stage_paths", lambda stage, registered, src=src: [src])
        M._code_digest.cache_clear()
        if len(keys) == 2:
            src.write_text("x = 2\n")     # the model's source edited
        keys.append(M._cache_key("rbm", 64, {"n_hidden": 8}))
    assert keys[0] == keys[1] != keys[2]
    monkeypatch.undo()
    M._code_digest.cache_clear()
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path / "other"))
    built = M._estimate("rbm", 64, {"n_hidden": 8})
    assert built[1] == 64 * 8 + 64 + 8
    assert M.memory_estimate("rbm", 64, {"n_hidden": 8}) == built        # built, then kept
    assert M.memory_estimate("rbm", 64, {"n_hidden": 8}) == built        # read back


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GM_CACHE_DIR", str(blocker / "cache"))   # below a file: cannot be made
    need, n = M.memory_estimate("rbm", 16, {"n_hidden": 4})
    assert n == 16 * 4 + 20


def test_a_user_without_a_home_gets_estimates_without_a_cache(tmp_path):
    """A container's user with no HOME and no passwd entry: no cache, the same estimate."""
    import os
    import shutil
    import subprocess
    import sys
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as a user with no passwd entry")
    code = ("from pipeline import memory as M\n"
            "print(M.cache_path(), M.memory_estimate('rbm', 16, {'n_hidden': 4})[1])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOME", "GM_CACHE_DIR", "XDG_CACHE_HOME")}
    r = subprocess.run(["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups",
                        sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["None", str(16 * 4 + 20)]


def test_a_build_stopped_by_the_limit_leaves_torch_as_it_was(monkeypatch):
    """The CPU limit stops an absurd build wherever the timer happens to fire, and torch's
    process-wide state is intact after it: gradients on, no mode left on the function-mode
    stack (the meta device), the default device CPU, Tensor.normal_ restored.  (Raised from the
    signal handler, _TooSlow once landed inside torch.no_grad's __enter__ and left gradients
    off for the rest of the process, in about 2% of builds; 300 builds, ~10 s.)"""
    import random
    import torch
    normal_ = torch.Tensor.normal_
    M._warm("diffusion", 1)
    rng = random.Random(0)
    for _ in range(300):
        monkeypatch.setattr(M, "BUILD_SECONDS", rng.uniform(0.002, 0.03))
        with pytest.raises(M._TooSlow):
            M.memory_estimate("diffusion", 1, {"n_layers": 10 ** 6})
        assert torch.is_grad_enabled()
        assert torch._C._len_torch_function_stack() == 0
        assert torch.empty(1).device.type == "cpu"
        assert torch.Tensor.normal_ is normal_
