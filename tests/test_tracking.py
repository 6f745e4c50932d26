"""Deferred MLflow calls: kept in the run's pending file without importing MLflow, sent in
order when the deferral ends or when the report stage replays them."""
import sys

from conftest import run

DEFERRED = """
import sys, time
from pathlib import Path
from pipeline.tracking import RunLogger, replay_all
defer = float(sys.argv[1])
t = RunLogger(Path("results/bars_stripes/rbm/seed0"), "bars_stripes", "rbm", 0,
              params={"seed": 0}, tags={"gm.params_hash": "h"}, defer=defer)
for step in (1, 2, 3):
    t.metrics({"loss": 10.0 - step}, step=step)
t.flush()
print("mlflow imported while deferred:", "mlflow" in sys.modules)
if defer < 5:
    time.sleep(defer)
    t.metrics({"loss": 6.0}, step=4)      # the deferral is over: everything goes out, in order
    t.finish()
else:
    print("still pending:", Path("results/bars_stripes/rbm/seed0/mlflow_pending.jsonl").exists())
    print("left after replay:", replay_all())
"""


def history(workdir):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("bars_stripes").experiment_id])
    return r, [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "loss")]


def test_calls_deferred_past_their_time_go_live_in_order(tmp_path):
    out = run([sys.executable, "-c", DEFERRED, "1.0"], tmp_path).stdout
    assert "mlflow imported while deferred: False" in out
    r, h = history(tmp_path)
    assert sorted(h) == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]
    assert r.info.status == "FINISHED" and r.data.params["seed"] == "0"
    assert not (tmp_path / "results/bars_stripes/rbm/seed0/mlflow_pending.jsonl").exists()


def test_calls_deferred_for_good_are_sent_by_replay(tmp_path):
    out = run([sys.executable, "-c", DEFERRED, "inf"], tmp_path).stdout
    assert "mlflow imported while deferred: False" in out and "still pending: True" in out
    assert "left after replay: []" in out
    _, h = history(tmp_path)
    assert sorted(h) == [(1, 9.0), (2, 8.0), (3, 7.0)]



OUTAGE = """
from pathlib import Path
from pipeline.tracking import RunLogger, replay_all
dirs = [Path(f"results/bars_stripes/rbm/seed{s}") for s in (0, 1)]
for s, d in enumerate(dirs):
    RunLogger(d, "bars_stripes", "rbm", s, defer=float("inf")).metrics({"loss": 1.0}, step=1)
before = [len((d / "mlflow_pending.jsonl").read_text().splitlines()) for d in dirs]
left = replay_all(dirs)
after = [len((d / "mlflow_pending.jsonl").read_text().splitlines()) for d in dirs]
print("left", [d.name for d in left], "before", before, "after", after)
"""


def test_an_outage_ends_the_replay_pass_after_the_first_run(tmp_path):
    """With the store down, replay tries one run (its calls, plus the replaying logger's own
    open, stay pending in order) and leaves the others untouched instead of retrying each."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                          # nothing listens here
    out = run([sys.executable, "-c", OUTAGE], tmp_path, env={
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "GM_MLFLOW_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}).stdout
    assert "left ['seed0', 'seed1'] before [1, 1] after [2, 1]" in out, out
