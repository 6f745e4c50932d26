"""Fault tests with real processes: SIGKILL mid-training (live and deferred MLflow logging) and
resume, SIGKILL mid-replay, an MLflow store locked mid-training, 8 concurrent MLflow writers, NaN
divergence, corrupt/foreign/malicious checkpoints.  MLflow metric points are COUNTED (a
duplicate step fails), never compared as sets.

Each stage runs as ``python -m pipeline.<stage>`` in a scratch project (tests/cluster_fixtures.py).
"""
from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster_fixtures import (copy_project, run_stage, stage_cmd, stage_env, tiny_params,
                              write_params)

RUN = Path("results/bars_stripes/rbm/seed0")


def rbm_block(epochs: int, checkpoint_every: int, **model) -> dict:
    return {"train": {"epochs": epochs, "batch_size": 100, "checkpoint_every": checkpoint_every},
            "model": {"n_hidden": 8, "lr": 0.05} | model}


def clone_workspace(src: Path, dest: Path) -> Path:
    """A second scratch project with the same prepared data and params."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "data", dest / "data")
    shutil.copy2(src / "params.yaml", dest / "params.yaml")
    return dest


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Recursively compare nested dicts/lists of tensors and numbers exactly."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ {set(a) ^ set(b)}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a - b).abs().max()})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --- MLflow: what the store holds -----------------------------------------------------------------
def mlflow_runs(workdir: Path, key: str = "bars_stripes/rbm/seed0") -> list:
    """The MLflow runs of ``key`` in the default SQLite store of ``workdir``, oldest first."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(key.split("/")[0])
    return list(client.search_runs([exp.experiment_id], f"tags.`gm.run_key` = '{key}'",
                                   order_by=["attributes.start_time ASC"]))


def points(workdir: Path, run) -> dict[str, list[tuple[int, float]]]:
    """Every logged point of every metric of ``run``, by step, duplicates KEPT (counts matter)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return {m: sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, m))
            for m in run.data.metrics}


def assert_each_step_once(got: dict, reference: dict, epochs: int) -> int:
    """Every metric of ``reference`` is in ``got`` with steps 1..epochs (or one step-0 point)
    exactly once each, and the same values except wall-clock times; returns the point count."""
    assert set(got) == set(reference), set(got) ^ set(reference)
    n = 0
    for name, ref in reference.items():
        want_steps = [0] if name == "train_seconds" else list(range(1, epochs + 1))
        assert [s for s, _ in got[name]] == want_steps, (
            f"metric {name}: {len(got[name])} points for {len(want_steps)} steps")
        if not name.endswith("_seconds"):
            assert got[name] == ref, f"metric {name}: values differ from the uninterrupted run"
        n += len(got[name])
    return n


def journal_records(workdir: Path) -> list[dict]:
    path = workdir / RUN / "mlflow_journal.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass                                   # a line torn by the kill
    return out


def journaled_steps(workdir: Path) -> int:
    """The highest epoch step whose metrics reached the journal (sent or not)."""
    return max((step for r in journal_records(workdir) if r.get("op") == "metrics"
                for _, step, _ in r["args"]["batch"]), default=0)


def acks(workdir: Path) -> int:
    return sum("ack" in r for r in journal_records(workdir))


def kill_when(cmd: list[str], workdir: Path, env: dict, ready, log: Path,
              timeout: float = 240) -> subprocess.Popen:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fail if it ended first."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stderr=err, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"{cmd[2]} ended ({proc.returncode}) before the kill: make it longer\n"
        + log.read_text()[-2000:])
    return proc


def replay_cmd(*dirs) -> list[str]:
    return [sys.executable, "-m", "pipeline.tracking", "--replay", *map(str, dirs)]


def pending_now(workdir: Path) -> list[str]:
    """``python -m pipeline.tracking --status``: one line per run with calls pending."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.tracking", "--status"], cwd=workdir,
                          env=stage_env(), capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()


FLUSH_EVERY_EPOCH = {"GM_MLFLOW_FLUSH_SECONDS": "0"}   # each epoch's metrics leave at once
LIVE = {"GM_MLFLOW_DEFER_SECONDS": "0"}


def long_rbm(epochs: int, every: int) -> dict:
    """~30 ms per epoch: room for a kill between two checkpoints."""
    return {"train": {"epochs": epochs, "batch_size": 20, "checkpoint_every": every},
            "model": {"n_hidden": 8, "lr": 0.05}}


# --- SIGKILL mid-training ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("logging", ["deferred", "live"])
def test_sigkill_mid_training_resumes_with_identical_numbers_and_each_step_once(
        workspace, tmp_path, logging):
    """Killed after steps past its last checkpoint were journaled (deferred) or sent (live), the
    training resumes from the checkpoint into the same MLflow run; every metric step is there
    exactly once (counted) with the values of an uninterrupted run."""
    epochs, every = 200, 20
    env = stage_env(**FLUSH_EVERY_EPOCH, **(LIVE if logging == "live" else {}))
    write_params(workspace, tiny_params(rbm=long_rbm(epochs, every)))
    reference = clone_workspace(workspace, tmp_path / "reference")
    run_stage(reference, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    run_stage(reference, "tracking", replay=RUN)

    ckpt = workspace / RUN / "checkpoint.pt"

    def past_a_checkpoint():
        return ckpt.exists() and journaled_steps(workspace) >= load_ckpt(ckpt)["epoch"] + 3
    kill_when(stage_cmd("train", dataset="bars_stripes", model="rbm", seed=0), workspace, env,
              past_a_checkpoint, tmp_path / "killed.log")
    assert not (workspace / RUN / "model.pt").exists(), "killed run must not leave a final model"
    assert not (workspace / RUN / "train.json").exists()
    killed_at, logged = load_ckpt(ckpt)["epoch"], journaled_steps(workspace)
    assert 0 < killed_at < epochs and killed_at % every == 0
    assert logged > killed_at, "the kill must land after steps past the checkpoint were logged"

    run_stage(workspace, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    info = json.loads((workspace / RUN / "train.json").read_text())
    ref_info = json.loads((reference / RUN / "train.json").read_text())
    assert info["resumed_from_epoch"] == killed_at
    assert not ckpt.exists(), "the resume checkpoint is removed once training finished"

    resumed, uninterrupted = load_ckpt(workspace / RUN / "model.pt"), load_ckpt(reference / RUN / "model.pt")
    assert_same_tensors(resumed["state_dict"], uninterrupted["state_dict"], "state_dict")
    assert_same_tensors(resumed["optimizers"], uninterrupted["optimizers"], "optimizers")

    def numbers(history):
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]
    assert numbers(info["history"]) == numbers(ref_info["history"])
    assert [h["epoch"] for h in info["history"]] == list(range(1, epochs + 1))

    run_stage(workspace, "tracking", env=env, replay=RUN)
    assert pending_now(workspace) == []
    (run,) = mlflow_runs(workspace)             # the resume continued the run: one run
    (ref_run,) = mlflow_runs(reference)
    assert run.info.status == "FINISHED"
    assert info["mlflow_run_id"] in (None, run.info.run_id)     # None: deferred, sent later
    n = assert_each_step_once(points(workspace, run), points(reference, ref_run), epochs)
    print(f"\n{logging}: killed with steps 1..{logged} logged, checkpoint at {killed_at}/{epochs}; "
          f"resumed: {n} metric points, each step once, values identical to the uninterrupted run")


@pytest.mark.slow
def test_sigkill_without_a_checkpoint_retrains_into_a_new_run(workspace, tmp_path):
    """No checkpoint: the rerun trains afresh into a NEW MLflow run (never appending to the
    killed one, which ends KILLED holding its steps once each)."""
    epochs = 100
    env = stage_env(**FLUSH_EVERY_EPOCH)
    write_params(workspace, tiny_params(rbm=long_rbm(epochs, 0)))
    reference = clone_workspace(workspace, tmp_path / "reference")
    run_stage(reference, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    run_stage(reference, "tracking", replay=RUN)
    kill_when(stage_cmd("train", dataset="bars_stripes", model="rbm", seed=0), workspace, env,
              lambda: journaled_steps(workspace) >= 10, tmp_path / "killed.log")
    logged = journaled_steps(workspace)
    run_stage(workspace, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    run_stage(workspace, "tracking", replay=RUN)
    killed, fresh = mlflow_runs(workspace)
    (ref_run,) = mlflow_runs(reference)
    assert (killed.info.status, fresh.info.status) == ("KILLED", "FINISHED")
    ref = points(reference, ref_run)
    assert_each_step_once(points(workspace, fresh), ref, epochs)
    old = points(workspace, killed)
    assert [s for s, _ in old["recon_error"]] == list(range(1, logged + 1))
    assert old["recon_error"] == ref["recon_error"][:logged]
    print(f"\nkilled after {logged}/{epochs} epochs without checkpoint: old run KILLED with "
          f"{logged} steps once each, new run {epochs} steps once each")


# --- SIGKILL mid-replay ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_replay_loses_nothing_and_duplicates_nothing(workspace, tmp_path):
    """A deferred training leaves ~200 calls in its journal; the replay is killed twice while it
    sends them, then run to the end: every step arrives exactly once."""
    epochs = 200
    write_params(workspace, tiny_params(rbm=long_rbm(epochs, 0)))
    env = stage_env(**FLUSH_EVERY_EPOCH)
    run_stage(workspace, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    calls = sum("op" in r for r in journal_records(workspace))
    assert calls >= epochs and acks(workspace) == 0
    killed_at, unacked_in_store = [], []
    for n in (20, 100):
        kill_when(replay_cmd(RUN), workspace, env, lambda n=n: acks(workspace) >= n,
                  tmp_path / f"replay-{n}.log")
        killed_at.append(acks(workspace))
        # points that reached the store although their call was not acknowledged (the kill fell
        # between send and acknowledgement): they are sent again below, and must not double
        records = journal_records(workspace)
        acked = {r["ack"] for r in records if "ack" in r}
        acked_steps = sum(len(r["args"]["batch"]) for r in records
                          if r.get("op") == "metrics" and r["id"] in acked)
        stored = sum(len(v) for k, v in points(workspace, mlflow_runs(workspace)[0]).items()
                     if k == "recon_error")
        unacked_in_store.append(stored - acked_steps)
    assert killed_at[-1] < calls, "the second kill must land before the replay ended"
    run_stage(workspace, "tracking", env=env, replay=RUN)
    assert pending_now(workspace) == []
    info = json.loads((workspace / RUN / "train.json").read_text())
    (run,) = mlflow_runs(workspace)
    got = points(workspace, run)
    for name in info["history"][0]:
        if name != "epoch":                     # the journaled values themselves, all of them
            assert got[name] == [(h["epoch"], h[name]) for h in info["history"]], name
    assert got["train_seconds"] == [(0, info["train_seconds"])]
    assert run.info.status == "FINISHED"
    print(f"\nreplay of {calls} calls killed after {killed_at} acknowledgements (points in the "
          f"store beyond them: {unacked_in_store}), then finished: "
          f"{sum(map(len, got.values()))} points, each step once")


# --- store unavailable mid-training ---------------------------------------------------------------
@pytest.mark.slow
def test_store_locked_mid_training_then_released_replay_completes_the_run(workspace, tmp_path):
    """Live logging; another process takes the SQLite store (an exclusive lock) after the run
    was created.  Training finishes offline, naming the true cause; once the lock is gone the
    replay completes THAT run (the journal knows it) with each step once."""
    epochs = 150
    write_params(workspace, tiny_params(rbm=long_rbm(epochs, 50)))
    env = stage_env(**FLUSH_EVERY_EPOCH, **LIVE, GM_MLFLOW_RETRIES="1")
    reference = clone_workspace(workspace, tmp_path / "reference")
    run_stage(reference, "train", env=env, dataset="bars_stripes", model="rbm", seed=0)
    import sqlite3
    log = tmp_path / "train.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(stage_cmd("train", dataset="bars_stripes", model="rbm", seed=0),
                                cwd=workspace, env=env, stderr=err)
        deadline = time.monotonic() + 240
        while acks(workspace) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        holder = sqlite3.connect(workspace / "mlflow.db", timeout=60, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")          # the store is now unusable for anyone else
        locked_at = acks(workspace)
        try:
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    stderr = log.read_text()
    assert "database is locked" in stderr and "kept in" in stderr, stderr[-3000:]
    info = json.loads((workspace / RUN / "train.json").read_text())
    assert info["mlflow_run_id"] is not None, "the run was created before the outage"
    assert pending_now(workspace)[0].startswith("bars_stripes/rbm/seed0: ")

    run_stage(workspace, "tracking", env=env, replay=RUN)
    assert pending_now(workspace) == []
    (run,) = mlflow_runs(workspace)
    assert run.info.run_id == info["mlflow_run_id"] and run.info.status == "FINISHED"
    (ref_run,) = mlflow_runs(reference)
    n = assert_each_step_once(points(workspace, run), points(reference, ref_run), epochs)
    print(f"\nstore locked after {locked_at} acknowledged calls; replay completed run "
          f"{run.info.run_id[:8]}: {n} points, each step once")


# --- concurrency ----------------------------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from pipeline.tracking import RunLogger
seed, steps, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
while not go.exists():          # every writer has imported everything: start together
    time.sleep(0.005)
t = RunLogger(Path(f"results/bars_stripes/rbm/seed{seed}"), "bars_stripes", "rbm", seed,
              params={"seed": seed}, tags={"gm.params_hash": "concurrency"})
for step in range(1, steps + 1):
    t.metrics({"a": seed * 1000 + step, "b": -step, "c": step / 7}, step=step)
t.finish()
"""


@pytest.mark.slow
def test_eight_concurrent_writers_to_default_sqlite_store_lose_no_metric(tmp_path):
    n_jobs, steps = 8, 25
    go = tmp_path / "go"
    env = stage_env()
    procs = [subprocess.Popen([sys.executable, "-c", "import mlflow.tracking\n" + WRITER,
                               str(s), str(steps), str(go)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in range(n_jobs)]
    time.sleep(2)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for s, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"writer {s} crashed:\n{err[-2000:]}"
        assert "kept in" not in err, f"writer {s} fell back to its journal:\n{err[-2000:]}"
    assert pending_now(tmp_path) == []

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bars_stripes")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == n_jobs
    logged = 0
    for run in runs:
        seed = int(run.data.tags["gm.seed"])
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == str(seed)
        for name, value in (("a", lambda k: seed * 1000 + k), ("b", lambda k: -k),
                            ("c", lambda k: k / 7)):
            hist = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, name))
            assert hist == [(k, pytest.approx(value(k))) for k in range(1, steps + 1)], (seed, name)
            logged += len(hist)
    assert logged == n_jobs * steps * 3
    print(f"\n{n_jobs} concurrent writers: {logged}/{n_jobs * steps * 3} metric values logged")


# --- divergence -----------------------------------------------------------------------------------
def test_nan_divergence_fails_with_model_and_epoch(workspace):
    write_params(workspace, tiny_params(rbm=rbm_block(8, 0, lr=1e5)))
    proc = run_stage(workspace, "train", dataset="bars_stripes", model="rbm", seed=0, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'rbm' diverged at epoch "), last
    assert "learning rate" in last
    assert not (workspace / RUN / "model.pt").exists()
    marker = json.loads((workspace / RUN / "failed.json").read_text())
    assert marker["error"] in last, "failed.json must hold the message the report shows"


@pytest.mark.slow
def test_keep_going_finishes_other_models_and_report_marks_the_diverged_one(tmp_path):
    proj = copy_project(tmp_path / "proj")
    params = tiny_params(rbm=rbm_block(8, 0, lr=1e5),
                         fvsbn={"train": {"epochs": 3, "batch_size": 100}, "model": {}})
    params["runs"].append({"dataset": "bars_stripes", "model": "fvsbn"})
    write_params(proj, params)
    proc = subprocess.run(["timeout", "-k", "30", "1500", "snakemake", "--cores", "2",
                           "--keep-going"], cwd=proj, env=stage_env(), capture_output=True,
                          text=True, timeout=1600)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert (proj / "results/bars_stripes/fvsbn/seed0/eval.json").exists(), "fvsbn must finish"
    report = (proj / "reports/report.md").read_text()
    failed = report[report.index("Failed or missing runs"):]
    assert "rbm" in failed and "diverged at epoch" in failed
    assert "| fvsbn |" in report[:report.index("Failed or missing runs")]


def test_divergence_names_the_first_non_finite_epoch(workspace):
    from gm.data import load_splits
    from gm.errors import DivergenceError
    from pipeline.train import train_model
    import gm
    x = torch.as_tensor(load_splits(workspace / "data/processed/bars_stripes.npz").x["train"])
    finite = []
    model = gm.build("rbm", x.shape[1], n_hidden=8, lr=1e5)
    with pytest.raises(DivergenceError) as err:
        train_model(model, x, epochs=20, batch_size=100, generator=torch.Generator().manual_seed(0),
                    on_epoch=lambda e, m: finite.append(e))
    assert len(finite) >= 1, "pick a learning rate that diverges after the first epoch"
    assert f"model 'rbm' diverged at epoch {len(finite) + 1}:" in str(err.value)


# --- corrupt and foreign checkpoints --------------------------------------------------------------
class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a checkpoint\xff" * 64)


@pytest.fixture(scope="module")
def trained(prepared_data, tmp_path_factory) -> Path:
    """A finished tiny training run (model.pt) to damage in different ways."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(prepared_data, root / "data")
    write_params(root, tiny_params(rbm=rbm_block(2, 1)))
    run_stage(root, "train", dataset="bars_stripes", model="rbm", seed=0)
    return root


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other_model", "pickle_payload"])
def test_bad_checkpoint_gives_a_clear_error(trained, tmp_path, damage):
    from gm.errors import CheckpointError
    from pipeline import checkpoint
    good = trained / RUN / "model.pt"
    bad = tmp_path / "model.pt"
    marker = tmp_path / "payload-ran"
    if damage == "garbage":
        _garbage(bad)
    elif damage == "truncated":
        _truncated(bad, good)
    elif damage == "foreign":
        _foreign(bad)
    elif damage == "other_model":
        shutil.copy2(good, bad)
        with pytest.raises(CheckpointError, match="checkpoint is of model 'rbm', expected 'dae'"):
            checkpoint.load_state(bad, expect_model="dae")
        return
    else:
        bad.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_state(bad, expect_model="rbm")
    msg = str(err.value)
    assert str(bad) in msg and "delete it and rerun training" in msg
    assert not marker.exists(), "weights_only=True must refuse to run pickled code"


def test_corrupt_resume_checkpoint_stops_train_stage_with_one_clear_line(trained, tmp_path):
    ws = clone_workspace(trained, tmp_path / "ws")
    (ws / RUN).mkdir(parents=True)
    _truncated(ws / RUN / "checkpoint.pt", trained / RUN / "model.pt")
    proc = run_stage(ws, "train", dataset="bars_stripes", model="rbm", seed=0, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "checkpoint.pt" in last and "rerun training" in last, last


def test_corrupt_model_stops_evaluate_stage_with_one_clear_line(trained, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    _garbage(ws / RUN / "model.pt")
    proc = run_stage(ws, "evaluate", dataset="bars_stripes", model="rbm", seed=0, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model.pt" in last and "rerun training" in last, last
