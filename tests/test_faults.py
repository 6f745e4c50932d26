"""Fault tests with real processes: SIGKILL mid-training and resume, 8 concurrent MLflow writers,
NaN divergence, corrupt/foreign/malicious checkpoints.

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


def metric_steps(workdir: Path, key: str = "bars_stripes/rbm/seed0") -> dict[str, set[int]]:
    """Steps logged per metric in the run of ``key``, read back from the default SQLite store."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(key.split("/")[0])
    runs = client.search_runs([exp.experiment_id], f"tags.`gm.run_key` = '{key}'")
    assert len(runs) == 1, f"expected one MLflow run for {key}, found {len(runs)}"
    return {m: {h.step for h in client.get_metric_history(runs[0].info.run_id, m)}
            for m in runs[0].data.metrics}


# --- SIGKILL mid-training ------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_checkpoint_with_identical_numbers(workspace, tmp_path):
    epochs, every = 100, 5
    write_params(workspace, tiny_params(rbm=rbm_block(epochs, every)))
    reference = clone_workspace(workspace, tmp_path / "reference")
    run_stage(reference, "train", dataset="bars_stripes", model="rbm", seed=0)

    ckpt = workspace / RUN / "checkpoint.pt"
    with open(tmp_path / "killed.log", "w") as err:
        proc = subprocess.Popen(stage_cmd("train", dataset="bars_stripes", model="rbm", seed=0),
                                cwd=workspace, env=stage_env(), stderr=err)
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)                         # land between two checkpoints, mid-epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"training ended ({proc.returncode}) before the kill: raise epochs in this test\n"
        + (tmp_path / "killed.log").read_text()[-2000:])
    assert not (workspace / RUN / "model.pt").exists(), "killed run must not leave a final model"
    assert not (workspace / RUN / "train.json").exists()
    killed_at = load_ckpt(ckpt)["epoch"]
    assert 0 < killed_at < epochs and killed_at % every == 0

    run_stage(workspace, "train", dataset="bars_stripes", model="rbm", seed=0)
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

    # Nothing lost in MLflow: the killed and the resumed process together kept every epoch's
    # calls (a short training defers them, pipeline/tracking.py), and they all arrive.
    run_stage(workspace, "tracking", replay=RUN)
    steps = metric_steps(workspace)
    for name in ref_info["history"][0]:
        if name != "epoch":
            assert set(range(1, epochs + 1)) <= steps[name], f"metric {name} lost epochs"
    print(f"\nkilled after checkpoint epoch {killed_at}/{epochs}; resumed run identical "
          f"({len(resumed['state_dict'])} tensors), {len(steps)} metrics complete")


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
        assert "mlflow_pending" not in err, f"writer {s} fell back to its pending file:\n{err[-2000:]}"
    assert not list(tmp_path.glob("results/**/mlflow_pending.jsonl"))

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
