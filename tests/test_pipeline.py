"""The whole DAG on a tiny experiment: Snakemake and DVC runs, outputs, MLflow, determinism."""
import json
import re
import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import run, tiny_params

TIMING = {"train_seconds", "eval_seconds"}


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
    assert "bars_stripes: headline table" in md and "| rbm |" in md
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


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_dvc_repro_reruns_only_what_a_parameter_touches(project):
    p = tiny_params()
    p["models"]["fvsbn"] = {"train": {"epochs": 2, "batch_size": 50}, "model": {}}
    p["runs"].append({"dataset": "bars_stripes", "model": "fvsbn"})
    path = project(p)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    run(["dvc", "init", "-q"], path)
    first = run(["dvc", "repro"], path, timeout=900).stdout
    assert len(ran_stages(first)) == 8
    assert ran_stages(run(["dvc", "repro"], path).stdout) == set()
    metrics = run(["dvc", "metrics", "show", "--json"], path).stdout
    assert "test_log_likelihood" in metrics and "reports/metrics.json" in metrics
    run(["dvc", "plots", "show", "-o", "plots_html"], path)
    assert (path / "plots_html" / "index.html").stat().st_size > 0
    text = (path / "params.yaml").read_text().replace("n_hidden: 8", "n_hidden: 6")
    (path / "params.yaml").write_text(text)
    again = ran_stages(run(["dvc", "repro"], path, timeout=900).stdout)
    assert again == {"train@run0-0", "evaluate@run0-0", "report"}, again
    text = text.replace("ais_betas: 100", "ais_betas: 90")     # a budget: evaluation only
    (path / "params.yaml").write_text(text)
    budget = ran_stages(run(["dvc", "repro"], path, timeout=900).stdout)
    assert budget == {"evaluate@run0-0", "evaluate@run1-0", "report"}, budget


def snakemake_plan(path) -> set[str]:
    """The rules a dry run would execute ("Nothing to be done" -> empty set)."""
    out = run(["snakemake", "--cores", "1", "-n"], path).stdout
    return set(re.findall(r"^rule (\w+):", out, re.M)) - {"all"}


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
