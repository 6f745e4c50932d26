"""The tune stage (issue 15): an equal-budget Optuna search whose best configuration the default
run merges.  End to end with real Snakemake, real Optuna storage shared by two worker processes,
and a real kill of a worker mid-trial."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from cluster_fixtures import drop_database
from conftest import BIN, ROOT, run, tiny_params
from gm.errors import ConfigError
from pipeline import code
from pipeline import params as P
from pipeline import search
from pipeline.tune import duplicate_fraction

SPACE = {"objective": "likelihood", "train": {"epochs": [1, 4]},
         "model": {"lr": {"low": 0.01, "high": 0.2, "log": True}, "n_hidden": {"choices": [4, 8]}}}


def tune_params() -> dict:
    p = tiny_params()
    p["tuned"] = "configs/tuned"
    return p


def search_file(path, **over) -> dict:
    plan = {"runs": [{"dataset": "bars_stripes", "model": "rbm"}], "trials": 2, "workers": [0, 1],
            "trial_cpu_seconds": 5, "seed": 3, "startup_trials": 1,
            "budget": {"ais_chains": 5, "ais_betas": 20}, "models": {"rbm": SPACE}} | over
    (path / "configs" / "search.yaml").write_text(yaml.safe_dump(plan))
    return plan


def test_two_workers_share_one_study_and_the_default_run_uses_its_best(project):
    path = project(tune_params())
    search_file(path)
    run(["snakemake", "--cores", "2", "tune"], path, timeout=900)
    tuned = yaml.safe_load((path / "configs/tuned/bars_stripes/rbm.yaml").read_text())
    record = json.loads((path / "configs/studies/bars_stripes/rbm/study.json").read_text())
    workers = [json.loads((path / f"configs/studies/bars_stripes/rbm/workers/worker{w}.json")
                          .read_text()) for w in (0, 1)]
    # one study, exactly the budget: the two processes' trials together are trials 0 and 1
    assert sorted(n for w in workers for n in w["trials"]) == [0, 1]
    assert {w["study"] for w in workers} == {record["name"]}
    assert [r["state"] for r in record["records"]] == ["COMPLETE", "COMPLETE"]
    best = max(record["records"], key=lambda r: r["value"])
    study = tuned["study"]
    assert study["trials"] == 2 and study["best_value"] == best["value"]
    assert study["best_so_far"][-1] == best["value"] and len(study["best_so_far"]) == 2
    assert tuned["model"] == best["values"]["model"] and 0.01 <= tuned["model"]["lr"] <= 0.2
    assert tuned["train"]["epochs"] == best["epochs"] >= 1      # the epochs it trained
    # the test split is never read: the objective is the validation log-likelihood
    assert study["objective"] == "likelihood" and study["best_details"]["kind"] == "exact"

    # the default run merges the tuned values for this dataset's run and trains with them
    run(["snakemake", "--cores", "1", "results/bars_stripes/rbm/seed0/train.json"], path)
    info = json.loads((path / "results/bars_stripes/rbm/seed0/train.json").read_text())
    assert info["epochs"] == tuned["train"]["epochs"]
    state = torch.load(path / "results/bars_stripes/rbm/seed0/model.pt", weights_only=True)
    assert state["config"]["lr"] == pytest.approx(tuned["model"]["lr"])
    assert state["config"]["n_hidden"] == tuned["model"]["n_hidden"]
    # a changed tuned value reruns that training (a rerun trigger), nothing is stale
    other = dict(tuned, model=dict(tuned["model"], lr=0.0123))
    (path / "configs/tuned/bars_stripes/rbm.yaml").write_text(yaml.safe_dump(other))
    dry = run(["snakemake", "--cores", "1", "-n", "results/bars_stripes/rbm/seed0/train.json"],
              path).stdout
    assert "rule train:" in dry


@pytest.mark.slow   # a fault test: about 80 s
def test_a_killed_worker_resumes_and_the_budget_stays_exact(project):
    """SIGKILL in the middle of a trial: the rerun retries that trial and the study ends with
    exactly ``trials`` counted trials (the killed one marked failed, not counted)."""
    import optuna
    path = project(tune_params())
    plan = search_file(path, trials=3, workers=[0], trial_cpu_seconds=30,
                       models={"rbm": SPACE | {"train": {"epochs": [400, 500]}}})
    run(["snakemake", "--cores", "1", "results/bars_stripes/classifier.pt",
         "results/code/rbm.train.json"], path)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GM_PROGRESS="0")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "pipeline.tune", "--dataset", "bars_stripes", "--model", "rbm",
           "--worker", "0"]
    proc = subprocess.Popen(cmd, cwd=path, env=env, stderr=subprocess.PIPE, text=True)
    url = f"sqlite:///{path}/results/tune/bars_stripes/rbm/optuna.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:       # kill once a second trial is under way
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=None, storage=url).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if len(trials) >= 2 and trials[-1].state.name == "RUNNING":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run(cmd, path, timeout=600)
    params = P.load(path / "params.yaml")
    settings = search.study_settings(params, search.load(params, path / "configs/search.yaml"),
                                     "bars_stripes", "rbm")
    study = optuna.load_study(study_name=search.study_name(settings), storage=url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states.count("COMPLETE") == plan["trials"], states
    assert states.count("FAIL") == 1 and "RUNNING" not in states, states


def test_tuned_values_merge_per_dataset_and_bad_files_get_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tune_params()
    p["datasets"]["digits"] = {}
    p["runs"].append({"dataset": "digits", "model": "rbm"})
    folder = tmp_path / "configs/tuned/digits"
    folder.mkdir(parents=True)
    (folder / "rbm.yaml").write_text("train: {epochs: 9}\nmodel: {lr: 0.02}\nstudy: {trials: 1}\n")
    P.validate(p)
    assert P.train_settings(p, "rbm", "digits")["train"]["epochs"] == 9
    assert P.train_settings(p, "rbm", "digits")["model"] == {"n_hidden": 8, "lr": 0.02}
    assert P.train_settings(p, "rbm", "bars_stripes") == P.train_settings(
        dict(p, tuned=None), "rbm", "bars_stripes")            # another dataset: untouched
    for text, message in (("model: {n_hiden: 3}\n", "model.n_hiden: unknown key"),
                          ("train: {epochs: 0}\n", "train.epochs: must be a positive integer"),
                          ("trian: {epochs: 3}\n", "trian: unknown key")):
        (folder / "rbm.yaml").write_text(text)
        with pytest.raises(ConfigError) as err:
            P.validate(p)
        assert str(err.value).startswith(f"configs/tuned/digits/rbm.yaml: {message}"), err.value


def test_dvc_retrains_exactly_the_runs_whose_tuned_values_changed(tmp_path, monkeypatch):
    """DVC cannot name a file that may be missing as a param: the train stage's fingerprint
    file carries each dataset's tuned hash instead (code stages always run under DVC)."""
    monkeypatch.chdir(tmp_path)
    p = tune_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert code.tuned_hashes(["params.yaml"], "rbm") == {}
    folder = tmp_path / "configs/tuned/bars_stripes"
    folder.mkdir(parents=True)
    (folder / "rbm.yaml").write_text("train: {epochs: 2}\nstudy: {best_value: 1.0}\n")
    first = code.tuned_hashes(["params.yaml"], "rbm")
    (folder / "rbm.yaml").write_text("train: {epochs: 2}\nstudy: {best_value: 2.0}\n")
    assert code.tuned_hashes(["params.yaml"], "rbm") == first      # only the values count
    (folder / "rbm.yaml").write_text("train: {epochs: 3}\n")
    assert code.tuned_hashes(["params.yaml"], "rbm") != first
    assert code.tuned_hashes(["params.yaml"], "fvsbn") == {}


@pytest.mark.parametrize("space, message", [
    ({"objective": "likelihood", "model": {"n_hiden": [1, 3]}}, "models.rbm.model.n_hiden"),
    ({"objective": "likelihood", "model": {"n_hidden": [0, 3]}}, "models.rbm.model.n_hidden"),
    ({"objective": "likelihood", "model": {"lr": [0.2, 0.1]}}, "models.rbm.model.lr: a range"),
    ({"objective": "likelihood", "model": {"lr": {"low": 0, "high": 1, "log": True}}},
     "models.rbm.model.lr: a log range needs low > 0"),
    ({"objective": "fid", "model": {}}, "models.rbm.objective"),
    ({"objective": "likelihood", "train": {"epoch": [1, 2]}}, "models.rbm.train.epoch"),
    ({"objective": "likelihood", "budget": {"ais_chain": 3}}, "models.rbm.budget.ais_chain"),
    ({"objective": "likelihood", "budget": {"ais_chains": 0}}, "models.rbm.budget.ais_chains"),
    ({"objective": "likelihood", "budget": 5}, "models.rbm.budget"),
])
def test_bad_search_spaces_are_refused_before_any_trial(tmp_path, space, message):
    (tmp_path / "configs").mkdir()
    search_file(tmp_path, models={"rbm": space})
    with pytest.raises(ConfigError) as err:
        search.load(tune_params(), tmp_path / "configs/search.yaml")
    assert str(err.value).startswith(f"{tmp_path}/configs/search.yaml: {message}"), err.value


def test_a_models_own_objective_budget_merges_over_the_global_one_for_it_alone(tmp_path):
    """A space's budget: (e.g. more draws of a noisy bound) changes its own study's settings
    and name only; every other study keeps its settings."""
    params = tune_params()
    params["models"]["fvsbn"] = {"train": {"epochs": 2, "batch_size": 10}, "model": {}}
    (tmp_path / "configs").mkdir()
    base = {"objective": "likelihood", "model": {"n_hidden": [2, 4]}}
    settings = {}
    for own in ({}, {"ais_betas": 40}):
        search_file(tmp_path, models={"rbm": base | ({"budget": own} if own else {}),
                                      "fvsbn": {"objective": "likelihood"}})
        plan = search.load(params, tmp_path / "configs/search.yaml")
        settings[bool(own)] = {m: search.study_settings(params, plan, "bars_stripes", m)
                               for m in ("rbm", "fvsbn")}
    assert settings[True]["rbm"]["budget"] == {"ais_chains": 5, "ais_betas": 40}
    assert settings[False]["rbm"]["budget"] == {"ais_chains": 5, "ais_betas": 20}
    assert settings[True]["fvsbn"] == settings[False]["fvsbn"]
    assert (search.study_name(settings[True]["rbm"])
            != search.study_name(settings[False]["rbm"]))


def test_the_committed_search_is_valid_and_equal_for_every_model():
    params = P.load(ROOT / "params.yaml")
    plan = search.load(params, ROOT / "configs/search.yaml")
    runs = search.tune_runs(params, plan)
    assert len(runs) == len(plan["runs"]) >= 20
    for key in ("trials", "trial_cpu_seconds"):   # one budget for all: never per model
        assert not any(key in space for space in plan["models"].values())


def test_collapse_penalty_counts_near_duplicate_samples():
    g = torch.Generator().manual_seed(0)
    reference = (torch.rand(100, 64, generator=g) < 0.5).double()
    distinct = (torch.rand(100, 64, generator=g) < 0.5).double()
    assert duplicate_fraction(distinct, reference) == 0.0
    collapsed = distinct[:1].repeat(100, 1)
    assert duplicate_fraction(collapsed, reference) == 1.0
    half = torch.cat([distinct[:50], distinct[:1].repeat(50, 1)])
    assert duplicate_fraction(half, reference) == pytest.approx(0.51, abs=0.01)


def _open_each(urls, barrier, results, k):
    """Child process k: open the same study in each empty database, the workers all at once."""
    from pipeline.tune import open_study
    settings = {"seed": 0, "startup_trials": 1, "dataset": "d", "model": "m", "space": {}}
    for i, url in enumerate(urls):
        barrier.wait()
        time.sleep(0.005 * k * i)   # worker k starts 0-35 ms after worker 0: every overlap
        try:
            results.put((url, open_study(settings, url)._study_id))
        except Exception as err:  # noqa: BLE001 - reported to the parent
            results.put((url, f"{type(err).__name__}: {str(err).splitlines()[0]}"))


def test_workers_starting_at_once_on_an_empty_postgresql_open_one_study(fresh_database):
    """SLURM starts a study's workers at the same moment; Optuna creates its tables with
    check-then-create, so without pipeline.tune.schema_lock one of two workers failed with
    `relation "studies" already exists` (in every run of this test: 4 of 4 failed without it).
    Three real processes, 8 rounds, each on a new empty database, the workers' starts staggered
    by 0-35 ms: every worker opens the one study."""
    import multiprocessing

    import psycopg2
    base, _, name = fresh_database.rpartition("/")
    names = [f"{name}_{i}" for i in range(8)]
    conn = psycopg2.connect(fresh_database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for n in names:
                cur.execute(f"CREATE DATABASE {n}")
        ctx = multiprocessing.get_context("fork")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        urls = [f"{base}/{n}" for n in names]
        procs = [ctx.Process(target=_open_each, args=(urls, barrier, results, k)) for k in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=300) for _ in range(3 * len(urls))]
        for p in procs:
            p.join(60)
        failures = [g for g in got if not isinstance(g[1], int)]
        assert not failures, failures
        for url in urls:
            assert len({sid for u, sid in got if u == url}) == 1, got
    finally:
        with conn.cursor() as cur:
            for n in names:
                drop_database(cur, n)
        conn.close()
