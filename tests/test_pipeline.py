"""The whole DAG on a tiny experiment: Snakemake and DVC runs, outputs, MLflow, determinism."""
import json
import re
import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import run, tiny_params
from rerun_helpers import (edit_source, ran_stages, rbm_and_fvsbn_project, snakemake_jobs,
                           snakemake_plan)

TIMING = {"train_seconds", "eval_seconds", "epoch_seconds", "cost"}


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory):
    from conftest import make_project
    path = make_project(tmp_path_factory.mktemp("smk") / "proj", tiny_params())
    run(["snakemake", "--cores", "2"], path, timeout=900)
    return path


def test_report_and_eval_json_contract(snakemake_run):
    path = snakemake_run
    for f in ("report.md", "report.html", "results.csv", "metrics.json", "curves.csv"):
        assert (path / "reports" / f).stat().st_size > 0, f
    ev = json.loads((path / "results/bars_stripes/rbm/seed0/eval.json").read_text())
    for key in ("dataset", "model", "seed", "test_log_likelihood", "sample_metrics",
                "train_seconds", "eval_seconds", "n_parameters"):
        assert key in ev, key
    ll = ev["test_log_likelihood"]
    assert ll["kind"] == "exact" and ll["method"] == "exact" and ll["mean"] < 0
    assert ll["mean"] <= -3.4011 + 1e-9        # never above the bars-and-stripes optimum -log 30
    md = (path / "reports/report.md").read_text()
    assert "bars_stripes: log-likelihoods, binary view" in md and "| rbm |" in md
    html = (path / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "src='figures" not in html


def test_mlflow_run_has_params_curves_metrics_and_artifacts(snakemake_run):
    client = MlflowClient(tracking_uri=f"sqlite:///{snakemake_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bars_stripes")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in runs] == ["rbm-seed0"]
    r = runs[0]
    assert r.data.params["model.model.n_hidden"] == "8"
    assert r.data.tags["gm.run_key"] == "bars_stripes/rbm/seed0"
    history = client.get_metric_history(r.info.run_id, "recon_error")
    assert [m.step for m in history] == [1, 2, 3]            # one point per epoch
    assert "test_log_likelihood" in r.data.metrics
    names = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
    assert {"evaluation/eval.json", "evaluation/samples.png"} <= names
    assert client.list_artifacts(r.info.run_id, "checkpoint")[0].path == "checkpoint/model.pt"
    _ = mlflow


def test_evaluation_restores_without_optimisers_or_dynamo(snakemake_run):
    """Optimisers are built on first use: restoring a model for evaluation imports neither
    torch._dynamo (pulled in by torch.optim, ~1.5 s) nor MLflow."""
    code = ("import sys\nfrom pipeline import checkpoint\n"
            "state = checkpoint.load_state('results/bars_stripes/rbm/seed0/model.pt')\n"
            "m = checkpoint.restore(state, 'cpu', optimizers=False)\n"
            "print(sorted(k for k in ('torch._dynamo', 'mlflow') if k in sys.modules))")
    assert run(["python", "-c", code], snakemake_run).stdout.strip() == "[]"


def test_same_seed_same_numbers(snakemake_run):
    path = snakemake_run
    f = path / "results/bars_stripes/rbm/seed0/eval.json"
    first = json.loads(f.read_text())
    run(["python", "-m", "pipeline.train", "--dataset", "bars_stripes", "--model", "rbm",
         "--seed", "0"], path)
    run(["python", "-m", "pipeline.evaluate", "--dataset", "bars_stripes", "--model", "rbm",
         "--seed", "0"], path)
    assert strip_timing(json.loads(f.read_text())) == strip_timing(first)


def test_snakemake_reruns_exactly_the_stages_whose_code_changed(project):
    path = rbm_and_fvsbn_project(project)
    run(["snakemake", "--cores", "2"], path, timeout=900)
    assert snakemake_jobs(path) == set()
    # one state: the run recorded its outputs in dvc.lock, so DVC has nothing to do either
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], path).stdout
    assert ran_stages(run(["dvc", "repro"], path).stdout) == set()
    edit_source(path, "gm/models/autoregressive/fvsbn.py")
    assert snakemake_jobs(path) == {("code", "fvsbn"), ("train", "fvsbn"), ("evaluate", "fvsbn"),
                                    ("report", "")}
    run(["snakemake", "--cores", "2"], path, timeout=900)
    edit_source(path, "gm/estimators/exact.py")                # used by rbm, not by fvsbn
    assert snakemake_jobs(path) == {("code", "rbm"), ("train", "rbm"), ("evaluate", "rbm"),
                                    ("report", "")}
    edit_source(path, "pipeline/report.py")
    assert ("code_report", "") in snakemake_jobs(path) and ("train", "rbm") in snakemake_jobs(path)
    # the stages before training: a dataset's module, the classifier's code
    run(["snakemake", "--cores", "2"], path, timeout=900)
    edit_source(path, "gm/data/bars_stripes.py")
    assert {("code_prepare", ""), ("prepare", "")} <= snakemake_jobs(path)
    run(["snakemake", "--cores", "2"], path, timeout=900)
    edit_source(path, "gm/data/digits.py")                     # another dataset's module
    assert snakemake_jobs(path) == set()
    edit_source(path, "gm/metrics/classifier.py")
    jobs = snakemake_jobs(path)
    assert {("code_classifier", ""), ("classifier", "")} <= jobs and ("prepare", "") not in jobs
    run(["snakemake", "--cores", "2"], path, timeout=900)
    # results that DVC made with a value since reverted are not taken as up to date
    text = (path / "params.yaml").read_text()
    (path / "params.yaml").write_text(text.replace("n_hidden: 8", "n_hidden: 6"))
    run(["dvc", "repro", "train@run0-0"], path, timeout=900)
    (path / "params.yaml").write_text(text)
    dry = run(["snakemake", "--cores", "1", "-n"], path).stdout
    assert "rbm: train results were made with other settings" in dry
    out = run(["snakemake", "--cores", "2"], path, timeout=900).stdout + "".join(
        p.read_text() for p in (path / ".snakemake" / "log").glob("*.log"))
    assert re.search(r"rule train:\n(.*\n){0,6}.*model=rbm", out), out[-3000:]
    train = json.loads((path / "results/bars_stripes/rbm/seed0/train.json").read_text())
    import yaml
    from pipeline import provenance
    expected = provenance.digest(provenance.train_params(yaml.safe_load(text), "bars_stripes",
                                                         "rbm", 0))
    assert train["fingerprint"]["params"] == expected


def test_evaluate_refuses_a_checkpoint_trained_with_other_params(snakemake_run, tmp_path):
    import shutil
    path = tmp_path / "copy"
    shutil.copytree(snakemake_run, path, symlinks=True)
    text = (path / "params.yaml").read_text()
    (path / "params.yaml").write_text(text.replace("n_hidden: 8", "n_hidden: 6"))
    before = (path / "results/bars_stripes/rbm/seed0/eval.json").read_bytes()
    r = run(["python", "-m", "pipeline.evaluate", "--dataset", "bars_stripes", "--model", "rbm",
             "--seed", "0"], path, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "model.pt: trained with other params" in lines[0]
    assert "models.rbm.model.n_hidden: 8 -> 6" in lines[0] and "rerun its train stage" in lines[0]
    assert (path / "results/bars_stripes/rbm/seed0/eval.json").read_bytes() == before


def test_snakemake_reruns_on_values_not_on_key_order_and_budgets_never_retrain(
        snakemake_run, tmp_path):
    import shutil
    import yaml
    path = tmp_path / "copy"
    shutil.copytree(snakemake_run, path, symlinks=True)
    run(["snakemake", "--cores", "1"], path)     # up to date (other tests rerun stages by hand)
    assert snakemake_plan(path) == set()
    params = yaml.safe_load((path / "params.yaml").read_text())

    def reorder(value):
        return {k: reorder(value[k]) for k in reversed(value)} if isinstance(value, dict) else value
    (path / "params.yaml").write_text(yaml.safe_dump(reorder(params), sort_keys=False))
    assert snakemake_plan(path) == set()           # same values, other order: nothing reruns
    params["models"]["rbm"]["evaluate"] = {"ais_betas": 17}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert snakemake_plan(path) == {"evaluate", "report"}   # a budget: never train
    params["models"]["rbm"]["model"]["n_hidden"] = 7
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert snakemake_plan(path) == {"train", "evaluate", "report"}


def test_sigkill_mid_report_leaves_the_previous_report_whole(snakemake_run, tmp_path):
    """A kill while the report stage builds leaves reports/ exactly as it was; the rerun
    writes the same report as an uninterrupted run."""
    import os
    import shutil
    import signal
    import time
    path = tmp_path / "copy"
    shutil.copytree(snakemake_run, path, symlinks=True)
    run(["python", "-m", "pipeline.report"], path)

    def snapshot():
        return {p.relative_to(path).as_posix(): p.read_bytes()
                for p in sorted((path / "reports").rglob("*")) if p.is_file()}
    before = snapshot()
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.report"], cwd=path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (path / "reports.building" / "results.csv").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot() == before                       # whole: nothing old lost, nothing new mixed in
    run(["python", "-m", "pipeline.report"], path)
    assert not (path / "reports.building").exists() and not (path / "reports.previous").exists()
    after = snapshot()
    assert after.keys() == before.keys()
    for name in ("reports/results.csv", "reports/pairs.csv", "reports/metrics.json"):
        assert after[name] == before[name], name
