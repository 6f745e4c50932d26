"""Many nodes, one tracking server: `mlflow server` on PostgreSQL, a training stage logging to it.

The fixtures start PostgreSQL (scripts/postgres-up.sh, as root), create a fresh database, and run
`mlflow server --backend-store-uri postgresql://...` on 127.0.0.1; the stage gets only
``MLFLOW_TRACKING_URI``, exactly as a SLURM job would (sbatch exports the environment).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_fixtures import (free_port, mlflow_server_process, run_stage, stage_env, tiny_params,
                              write_params)

RUN = Path("results/bars_stripes/rbm/seed0")
EPOCHS = 5


def server_env(url: str) -> dict[str, str]:
    # Fail fast on a dead server instead of MLflow's minutes of HTTP retries; log live from
    # the first epoch (the default defers a training's calls for its first 60 s).
    return stage_env(MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                     MLFLOW_HTTP_REQUEST_TIMEOUT="10", GM_MLFLOW_DEFER_SECONDS="0")


def logged_run(url: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("bars_stripes")
    assert exp is not None, "no experiment 'bars_stripes' on the server"
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in runs] == ["rbm-seed0"]
    return client, runs[0]


def assert_history_arrived(client, run, history: list[dict]) -> int:
    """Every per-epoch metric of train.json is on the server at its epoch step; returns count."""
    n = 0
    for name in history[0]:
        if name == "epoch":
            continue
        got = {h.step: h.value for h in client.get_metric_history(run.info.run_id, name)}
        want = {h["epoch"]: h[name] for h in history}
        assert got == pytest.approx(want), f"metric {name}"
        n += len(want)
    return n


def test_training_logs_to_mlflow_server_on_postgresql(mlflow_server, fresh_database, workspace):
    write_params(workspace, tiny_params(rbm={"train": {"epochs": EPOCHS, "batch_size": 100},
                                             "model": {"n_hidden": 8}}))
    run_stage(workspace, "train", env=server_env(mlflow_server),
              dataset="bars_stripes", model="rbm", seed=0)
    info = json.loads((workspace / RUN / "train.json").read_text())

    client, run = logged_run(mlflow_server)
    assert run.info.run_id == info["mlflow_run_id"]
    n = assert_history_arrived(client, run, info["history"])
    assert run.data.metrics["train_seconds"] == pytest.approx(info["train_seconds"])
    assert run.data.params["model.train.epochs"] == str(EPOCHS)
    assert {"gm.params_hash", "git_commit", "device"} <= set(run.data.tags)
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert arts == ["checkpoint/model.pt"]
    assert not (workspace / "mlflow.db").exists(), "the stage must not fall back to a local store"

    import psycopg2                      # the numbers really sit in PostgreSQL
    with psycopg2.connect(fresh_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key <> 'train_seconds'",
                    (run.info.run_id,))
        assert cur.fetchone()[0] == n
    print(f"\n{n} per-epoch metric values of {EPOCHS} epochs arrived in PostgreSQL via the server")


@pytest.mark.slow
def test_training_survives_a_tracking_server_outage_and_replays(fresh_database, workspace, tmp_path):
    """Server down during training: the stage finishes, keeps its calls, replays them later."""
    write_params(workspace, tiny_params(rbm={"train": {"epochs": 2, "batch_size": 100},
                                             "model": {"n_hidden": 8}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = run_stage(workspace, "train", env=server_env(url), timeout=900,
                     dataset="bars_stripes", model="rbm", seed=0)
    assert (workspace / RUN / "model.pt").exists(), "training must finish without its tracker"
    assert (workspace / RUN / "mlflow_pending.jsonl").exists()
    assert "kept in" in proc.stderr and "mlflow_pending.jsonl" in proc.stderr

    with mlflow_server_process(fresh_database, tmp_path, port=port):
        run_stage(workspace, "tracking", env=server_env(url), timeout=600, replay=RUN)
        info = json.loads((workspace / RUN / "train.json").read_text())
        client, run = logged_run(url)
        assert_history_arrived(client, run, info["history"])
    assert not (workspace / RUN / "mlflow_pending.jsonl").exists()
