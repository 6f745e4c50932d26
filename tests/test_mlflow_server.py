"""Many nodes, one tracking server: `mlflow server` on PostgreSQL, a training stage logging to it.

The fixtures start PostgreSQL (scripts/postgres-up.sh, as root), create a fresh database, and run
`mlflow server --backend-store-uri postgresql://...` on 127.0.0.1; the stage gets only
``MLFLOW_TRACKING_URI``, exactly as a SLURM job would (sbatch exports the environment).
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cluster_fixtures import (free_port, mlflow_server_process, run_stage, stage_cmd, stage_env,
                              tiny_params, write_params)

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
    """Every per-epoch metric of train.json is on the server at its epoch step with its value,
    exactly once (points are counted: a duplicate fails); returns the number of points."""
    n = 0
    for name in history[0]:
        if name == "epoch":
            continue
        got = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, name))
        assert [s for s, _ in got] == [h["epoch"] for h in history], f"metric {name}: steps"
        assert got == [(h["epoch"], pytest.approx(h[name])) for h in history], name
        n += len(got)
    return n


def test_training_logs_to_mlflow_server_on_postgresql(mlflow_server, fresh_database, workspace):
    write_params(workspace, tiny_params(rbm={"train": {"epochs": EPOCHS, "batch_size": 100},
                                             "model": {"n_hidden": 8}}))
    before = int(time.time() * 1000)
    run_stage(workspace, "train", env=server_env(mlflow_server),
              dataset="bars_stripes", model="rbm", seed=0)
    after = int(time.time() * 1000)
    info = json.loads((workspace / RUN / "train.json").read_text())

    client, run = logged_run(mlflow_server)
    assert run.info.run_id == info["mlflow_run_id"]
    n = assert_history_arrived(client, run, info["history"])
    assert run.data.metrics["train_seconds"] == pytest.approx(info["train_seconds"])
    assert run.data.params["model.train.epochs"] == str(EPOCHS)
    # the full resolved config, defaults included (params.yaml names only n_hidden here)
    import gm
    from gm.config import config_dict
    from gm.data import load_splits
    config = config_dict(gm.build("rbm", 16, n_hidden=8).config)
    assert {k: run.data.params[f"model.model.{k}"] for k in config} == {
        k: str(v) for k, v in config.items()}
    splits = load_splits(workspace / "data/processed/bars_stripes.npz")
    assert run.data.params["data.checksum"] == splits.checksum()
    # the run spans the stage's real wall-clock time
    assert before <= run.info.start_time < run.info.end_time <= after
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
    assert "kept in" in proc.stderr and "mlflow_journal.jsonl" in proc.stderr
    assert f"store {url} unreachable" in status(workspace)

    with mlflow_server_process(fresh_database, tmp_path, port=port):
        run_stage(workspace, "tracking", env=server_env(url), timeout=600, replay=RUN)
        info = json.loads((workspace / RUN / "train.json").read_text())
        client, run = logged_run(url)
        assert_history_arrived(client, run, info["history"])
    assert status(workspace) == ""


def status(workspace: Path) -> str:
    """``python -m pipeline.tracking --status``: a line per run with calls pending, and why."""
    proc = subprocess.run(stage_cmd("tracking") + ["--status"], cwd=workspace, env=stage_env(),
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.strip()


def acks(workspace: Path) -> int:
    path = workspace / RUN / "mlflow_journal.jsonl"
    return path.read_text().count('"ack"') if path.exists() else 0


@pytest.mark.slow
def test_server_killed_mid_training_then_restarted_replay_completes_the_run(
        fresh_database, workspace, tmp_path):
    """Live logging to the server; the server process is stopped after the run was created and
    some epochs arrived.  Training finishes offline; once the server is back on the same
    address, the replay completes THAT run, every epoch exactly once."""
    epochs = 200
    write_params(workspace, tiny_params(rbm={"train": {"epochs": epochs, "batch_size": 20},
                                             "model": {"n_hidden": 8}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(url) | {"GM_MLFLOW_FLUSH_SECONDS": "0", "GM_MLFLOW_RETRIES": "1"}
    with open(tmp_path / "train.log", "w") as err:
        with mlflow_server_process(fresh_database, tmp_path, port=port):
            proc = subprocess.Popen(stage_cmd("train", dataset="bars_stripes", model="rbm", seed=0),
                                    cwd=workspace, env=env, stderr=err)
            deadline = time.monotonic() + 300
            while acks(workspace) < 10 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "training ended before the outage: raise epochs"
        stopped_at = acks(workspace)                # the server is gone from here on
        assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    stderr = (tmp_path / "train.log").read_text()
    assert "kept in" in stderr, stderr[-3000:]
    info = json.loads((workspace / RUN / "train.json").read_text())
    assert info["mlflow_run_id"] is not None, "the run was created before the outage"
    assert f"store {url} unreachable" in status(workspace)

    with mlflow_server_process(fresh_database, tmp_path, port=port):
        run_stage(workspace, "tracking", env=env, timeout=600, replay=RUN)
        client, run = logged_run(url)
        assert run.info.run_id == info["mlflow_run_id"] and run.info.status == "FINISHED"
        n = assert_history_arrived(client, run, info["history"])
    assert status(workspace) == ""
    print(f"\nserver stopped after {stopped_at} acknowledged calls; replay completed run "
          f"{run.info.run_id[:8]}: {n} per-epoch points, each epoch once")
