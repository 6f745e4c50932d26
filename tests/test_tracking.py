"""MLflow calls through the run journal (pipeline/tracking.py, pipeline/journal.py), with real
processes and a real SQLite store: deferred calls, exactly-once steps across resumes, retrains
and repeated replays, real start/end times, outages and stuck runs.

Each session is a separate Python process (one stage's RunLogger); counts of metric points are
compared, never sets, so a duplicate step fails a test.
"""
import contextlib
import json
import sys
import time
from pathlib import Path

import pytest

from cluster_fixtures import free_port
from conftest import run
from mlflow_fixtures import empty_store, mlflow_template  # noqa: F401 - fixtures

RUN = Path("results/bars_stripes/rbm")

SESSION = """
import json, sys, time
from pathlib import Path
from pipeline.tracking import RunLogger
a = json.loads(sys.argv[1])
seed = a.get("seed", 0)
t = RunLogger(Path(a["dir"]), "bars_stripes", "rbm", seed, params={"seed": seed},
              tags={"gm.params_hash": "h"}, defer=float(a.get("defer", "inf")),
              scope=a.get("scope"), run_uid=a.get("uid"), create=a.get("create", True), start_time=a.get("start"))
for step in a.get("steps", []):
    t.metrics({"loss": 100.0 - step, "epoch_seconds": a.get("salt", 0) + step / 1000}, step=step)
    t.flush()
if a.get("eval"):
    t.metrics(a["eval"])                     # an evaluation's summary metrics (step 0)
if a.get("artifact"):
    Path(a["artifact"]).write_text("checkpoint")
    t.artifact(Path(a["artifact"]), "checkpoint")
time.sleep(a.get("sleep", 0))
if a.get("finish"):
    t.finish()
print(json.dumps({"uid": t.uid, "mlflow": "mlflow" in sys.modules}))
"""

REPLAY = "from pipeline.tracking import replay_all; print('left', replay_all())"


def session(workdir: Path, env: dict | None = None, **args) -> dict:
    args.setdefault("dir", str(RUN / f"seed{args.get('seed', 0)}"))
    out = run([sys.executable, "-c", SESSION, json.dumps(args)], workdir, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def replay(workdir: Path, env: dict | None = None) -> str:
    """Send every pending call: in a process of its own when ``env`` is given, else here."""
    if env is not None:
        return run([sys.executable, "-c", REPLAY], workdir, env=env).stdout
    from pipeline.tracking import replay_all
    with contextlib.chdir(workdir):
        return f"left {replay_all()}"


@pytest.fixture(autouse=True)
def project(tmp_path, empty_store, monkeypatch):  # noqa: F811 - the fixture
    """Each test's scratch directory starts with an empty default store (a cheap copy)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    empty_store(tmp_path)


_clients = {}


def store(workdir: Path):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return _clients.setdefault(uri, MlflowClient(tracking_uri=uri))


def runs(workdir: Path, seed: int = 0) -> list:
    """Every MLflow run of bars_stripes/rbm/seed<seed>, oldest first (deleted ones too)."""
    from mlflow.entities import ViewType
    client = store(workdir)
    exp = client.get_experiment_by_name("bars_stripes")
    found = client.search_runs([exp.experiment_id],
                               f"tags.`gm.run_key` = 'bars_stripes/rbm/seed{seed}'",
                               run_view_type=ViewType.ALL, order_by=["attributes.start_time ASC"])
    return list(found)


def steps(workdir: Path, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    """Every logged point of ``key``, duplicates kept, by step."""
    return sorted((m.step, m.value) for m in store(workdir).get_metric_history(run_id, key))


def journal(workdir: Path, seed: int = 0) -> Path:
    return workdir / RUN / f"seed{seed}" / "mlflow_journal.jsonl"


def pending(workdir: Path) -> list[dict]:
    from pipeline.tracking import pending_summary
    with contextlib.chdir(workdir):
        return [{k: str(v) for k, v in s.items()} for s in pending_summary()]


def test_deferred_calls_import_no_mlflow_and_replay_sends_each_once(tmp_path):
    out = session(tmp_path, steps=[1, 2, 3], finish=True)
    assert out["mlflow"] is False
    assert [p["calls"] for p in pending(tmp_path)] == ["5"]     # open, 3 x metrics, finish
    assert "left []" in replay(tmp_path)
    (r,) = runs(tmp_path)
    assert steps(tmp_path, r.info.run_id) == [(1, 99.0), (2, 98.0), (3, 97.0)]
    assert r.info.status == "FINISHED" and r.data.params["seed"] == "0"
    assert r.data.tags["gm.run_uid"] == out["uid"]
    assert pending(tmp_path) == []


def test_calls_deferred_past_their_time_go_live_in_order(tmp_path):
    out = session(tmp_path, defer=0.5, steps=[1, 2], sleep=0.6, finish=True)
    assert out["mlflow"] is True                  # the finish call went live, sending the rest
    (r,) = runs(tmp_path)
    assert steps(tmp_path, r.info.run_id) == [(1, 99.0), (2, 98.0)]
    assert r.info.status == "FINISHED" and pending(tmp_path) == []


def test_replaying_acknowledged_calls_again_changes_nothing(tmp_path):
    """A kill between a send and its acknowledgement leaves the call unacknowledged: it is sent
    again.  Stripping every acknowledgement after a full replay is that state for every call at
    once (open, metrics, artifact, finish); a second replay must not add a run or a point."""
    session(tmp_path, steps=[1, 2, 3], artifact=str(tmp_path / "model.pt"), finish=True)
    replay(tmp_path)
    (first,) = runs(tmp_path)
    lines = journal(tmp_path).read_text().splitlines()
    journal(tmp_path).write_text("".join(x + "\n" for x in lines if '"ack"' not in x))
    assert [p["calls"] for p in pending(tmp_path)] == ["6"]
    assert "left []" in replay(tmp_path)
    (again,) = runs(tmp_path)
    assert again.info.run_id == first.info.run_id
    assert steps(tmp_path, again.info.run_id) == [(1, 99.0), (2, 98.0), (3, 97.0)]
    assert len(store(tmp_path).get_metric_history(again.info.run_id, "epoch_seconds")) == 3
    assert [a.path for a in store(tmp_path).list_artifacts(again.info.run_id, "checkpoint")] \
        == ["checkpoint/model.pt"]


def test_a_resumed_session_continues_the_run_and_logs_each_step_once(tmp_path):
    """A training killed after step 5 (its checkpoint at step 2) resumes with the run's uid and
    recomputes steps 3-5: the run keeps the first measurement of each step, one point each."""
    first = session(tmp_path, scope="train", steps=[1, 2, 3, 4, 5], salt=0)   # no finish: killed
    session(tmp_path, scope="train", uid=first["uid"], steps=[3, 4, 5, 6, 7, 8], salt=1,
            finish=True)
    assert "left []" in replay(tmp_path)
    (r,) = runs(tmp_path)
    assert steps(tmp_path, r.info.run_id) == [(s, 100.0 - s) for s in range(1, 9)]
    secs = steps(tmp_path, r.info.run_id, "epoch_seconds")
    assert [s for s, _ in secs] == list(range(1, 9))
    assert [v for s, v in secs if s <= 5] == pytest.approx([s / 1000 for s in range(1, 6)])
    assert r.info.status == "FINISHED"


def test_a_fresh_retrain_starts_a_new_run_and_ends_the_killed_one(tmp_path):
    """No checkpoint to resume from: the retrain gets a new run (never appends to the old one),
    and the old run, never finished, is marked KILLED at its last call's time."""
    killed = session(tmp_path, scope="train", steps=[1, 2, 3])
    fresh = session(tmp_path, scope="train", steps=[1, 2, 3, 4, 5], finish=True)
    assert "left []" in replay(tmp_path)
    old, new = runs(tmp_path)
    assert old.data.tags["gm.run_uid"] == killed["uid"]
    assert new.data.tags["gm.run_uid"] == fresh["uid"]
    assert steps(tmp_path, old.info.run_id) == [(s, 100.0 - s) for s in range(1, 4)]
    assert steps(tmp_path, new.info.run_id) == [(s, 100.0 - s) for s in range(1, 6)]
    assert (old.info.status, new.info.status) == ("KILLED", "FINISHED")
    # the next fresh training drops the fully acknowledged older runs from the journal
    session(tmp_path, scope="train", steps=[1], finish=True)
    uids = {json.loads(x)["args"]["uid"] for x in journal(tmp_path).read_text().splitlines()
            if '"op":"open"' in x}
    assert killed["uid"] not in uids and fresh["uid"] not in uids


def test_a_retried_evaluation_logs_once_and_another_budget_logs_anew(tmp_path):
    """Evaluate attaches to the directory's newest training run.  Its scope names the budget:
    killed and rerun with the same budget, its metrics stay one point each (the first
    measurement stands, its wall-clock eval_seconds too); another budget is a new measurement."""
    session(tmp_path, scope="train", steps=[1, 2], finish=True)
    for scope, ll, secs in (("evaluate:b1", -5.0, 1.0), ("evaluate:b1", -5.0, 1.7),
                            ("evaluate:b2", -4.0, 3.0)):
        session(tmp_path, create=False, scope=scope, eval={"ll": ll, "eval_seconds": secs},
                finish=True)
    assert "left []" in replay(tmp_path)
    (r,) = runs(tmp_path)
    assert steps(tmp_path, r.info.run_id, "ll") == [(0, -5.0), (0, -4.0)]
    assert steps(tmp_path, r.info.run_id, "eval_seconds") == [(0, 1.0), (0, 3.0)]
    assert r.data.metrics["ll"] == -4.0                     # the newest evaluation shows
    assert steps(tmp_path, r.info.run_id) == [(1, 99.0), (2, 98.0)]


def test_runs_carry_the_stages_real_start_and_end_times(tmp_path):
    """Deferred calls are sent long after the stage ran; the run still spans the stage."""
    start = int(time.time() * 1000) - 3_600_000          # the stage began an hour ago
    session(tmp_path, steps=[1], start=start, sleep=1.0, finish=True)
    before_replay = int(time.time() * 1000)
    time.sleep(0.3)
    replay(tmp_path)
    (r,) = runs(tmp_path)
    assert r.info.start_time == start
    assert before_replay - 2000 < r.info.end_time < before_replay
    (m,) = store(tmp_path).get_metric_history(r.info.run_id, "loss")
    assert m.timestamp < before_replay                  # measured then, not when sent


def dead_store() -> str:
    return f"http://127.0.0.1:{free_port()}"            # nothing listens there


FAST_FAIL = {"GM_MLFLOW_RETRIES": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


def test_an_outage_ends_the_pass_for_that_store_and_the_journal_says_why(tmp_path):
    """Store down: replay tries the first run (one failed call: its open), finds the store down
    by a probe and does not try the second; both stay pending with the true cause."""
    url = dead_store()
    env = {"MLFLOW_TRACKING_URI": url} | FAST_FAIL
    for s in (0, 1):
        session(tmp_path, env=env, seed=s, steps=[1])
    t0 = time.monotonic()
    assert "left [PosixPath('results/bars_stripes/rbm/seed0'), PosixPath(" in replay(tmp_path, env)
    assert time.monotonic() - t0 < 60
    causes = {p["run"]: p["cause"] for p in pending(tmp_path)}
    assert causes["bars_stripes/rbm/seed0"].startswith(f"store {url} unreachable"), causes
    assert causes["bars_stripes/rbm/seed1"].startswith(f"not tried: store {url} failed"), causes


def test_a_stuck_run_does_not_block_the_others(tmp_path):
    """Three runs pending, replayed in order: seed0 was recorded on a tracking server that is
    gone, seed1's run was deleted in the store (its calls can never land), seed2 is healthy.
    seed2 arrives whole; the two stuck ones stay pending, each with its own true cause."""
    url = dead_store()
    session(tmp_path, env={"MLFLOW_TRACKING_URI": url}, seed=0, steps=[1])
    session(tmp_path, seed=0, create=False, eval={"ll": -1.0})    # follows its run's store
    opens = [json.loads(x)["args"] for x in journal(tmp_path).read_text().splitlines()
             if '"op":"open"' in x]
    assert [o["uri"] for o in opens] == [url, url]
    session(tmp_path, seed=1, steps=[1], defer=0)                 # live: its run exists
    session(tmp_path, seed=1, scope="train", create=False, steps=[2])  # then deferred calls
    store(tmp_path).delete_run(runs(tmp_path, 1)[0].info.run_id)
    session(tmp_path, seed=2, steps=[1, 2], finish=True)
    out = replay(tmp_path, FAST_FAIL)        # MLFLOW_TRACKING_URI unset: seed0 keeps its store
    assert "seed2" not in out.split("left")[1]
    (r2,) = runs(tmp_path, 2)
    assert steps(tmp_path, r2.info.run_id) == [(1, 99.0), (2, 98.0)]
    causes = {p["run"]: p["cause"] for p in pending(tmp_path)}
    assert set(causes) == {"bars_stripes/rbm/seed0", "bars_stripes/rbm/seed1"}
    assert causes["bars_stripes/rbm/seed0"].startswith(f"store {url} unreachable")
    assert "refused call 0 (open)" in causes["bars_stripes/rbm/seed1"], causes
    assert "was deleted in this store" in causes["bars_stripes/rbm/seed1"], causes


def test_a_pre_journal_pending_file_is_taken_over(tmp_path):
    """A run directory left by gm-bench before the journal (``mlflow_pending.jsonl``)."""
    d = tmp_path / RUN / "seed0"
    d.mkdir(parents=True)
    lines = [{"op": "open", "key": "bars_stripes/rbm/seed0",
              "args": {"dataset": "bars_stripes", "model": "rbm", "seed": 0, "tags": {},
                       "params": {"seed": "0"}, "create": True}},
             {"op": "metrics", "key": "bars_stripes/rbm/seed0",
              "args": {"batch": [[{"loss": 1.0}, 1, 1000], [{"loss": 0.5}, 2, 2000]]}}]
    (d / "mlflow_pending.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [p["calls"] for p in pending(tmp_path)] == ["2"]
    assert "left []" in replay(tmp_path)
    (r,) = runs(tmp_path)
    assert steps(tmp_path, r.info.run_id) == [(1, 1.0), (2, 0.5)]
    assert not (d / "mlflow_pending.jsonl").exists()
