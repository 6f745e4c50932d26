"""Every MLflow call of gm-bench lives here; stages talk to it through :class:`RunLogger`.

Store: ``MLFLOW_TRACKING_URI`` if set (e.g. a shared ``mlflow server``), else the SQLite file
``mlflow.db`` in the working directory (MLflow 3's default), with artifacts under
``mlartifacts/``.  One experiment per dataset, one run per (dataset, model, seed) named
``<model>-seed<s>``; train creates it, evaluate adds to the same run.

Deferred calls: importing MLflow and opening its store cost ~3.5 s of CPU per process, more
than most default trainings and evaluations take.  A RunLogger made with ``defer=S`` keeps
its calls in the run's pending file for the first S seconds and imports nothing; the first
call after that goes live, sending what was kept first.  Training defers DEFER_SECONDS
(``GM_MLFLOW_DEFER_SECONDS``, default 60): a longer training shows live curves, a shorter one
is logged whole later.  Evaluate defers everything.  The report stage sends every pending
call (:func:`replay_all`), so every run is complete in MLflow when the pipeline ends.

Per-epoch metrics are queued and sent every few seconds (and before checkpoints), so the UI
shows live curves without a database write per epoch.

Concurrency: with the local SQLite store, every write holds a file lock (``mlflow.db.lock``),
so ``snakemake --cores 8`` never meets "database is locked".  Failure: a call that still fails
after retries is appended to ``<run dir>/mlflow_pending.jsonl`` and replayed by the next stage
(or ``python -m pipeline.tracking --replay DIR``), so an outage loses nothing and is reported.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

log = logging.getLogger("gm-bench")
PENDING = "mlflow_pending.jsonl"
RETRIES = int(os.environ.get("GM_MLFLOW_RETRIES", "3"))
FLUSH_SECONDS = 2.0  # queued per-epoch metrics reach the store at least this often
DEFER_SECONDS = float(os.environ.get("GM_MLFLOW_DEFER_SECONDS", "60"))  # training (see above)
# one attempt against a dead server should cost seconds, not MLflow's minutes of HTTP retries
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _lock():
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return FileLock(uri[len("sqlite:///"):] + ".lock", timeout=600)
    return contextlib.nullcontext()


def _import_store() -> None:
    """Import MLflow and the SQL store modules (about 3 s of CPU, once per process)."""
    import mlflow.tracking  # noqa: F401
    if tracking_uri().startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = str(v)
    return out


class RunLogger:
    """Logs one (dataset, model, seed) run; safe to construct again in a later stage.

    ``run_id`` is found again by the tag ``gm.run_key`` so evaluate adds to train's run.
    """

    def __init__(self, run_dir: Path, dataset: str, model: str, seed: int, *,
                 tags: dict | None = None, params: dict | None = None, create: bool = True,
                 defer: float = 0.0):
        self.run_dir = Path(run_dir)
        self.key = f"{dataset}/{model}/seed{seed}"
        self.run_id: str | None = None
        self._client = None
        # offline: calls go to the pending file, in order (while deferred, or for good after a
        # call exhausted its retries)
        self.offline = defer > 0
        self._live_at = time.monotonic() + defer if defer > 0 else None
        self._queue: list = []
        self._flushed = time.monotonic()
        if not self.offline:
            self.replay_pending()
        self._call("open", dict(dataset=dataset, model=model, seed=seed, tags=tags or {},
                                params=_flatten(params or {}), create=create))

    # -- the calls -------------------------------------------------------------------------
    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue metrics; they are sent at most every FLUSH_SECONDS (live curves, few writes)."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._queue.append([clean, step, int(time.time() * 1000)])
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send every queued metric now (before checkpoints, artifacts and the end)."""
        if self._queue:
            self._call("metrics", dict(batch=self._queue))
            self._queue = []
        self._flushed = time.monotonic()

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        self.flush()
        self._call("artifact", dict(path=str(Path(path).resolve()), subdir=subdir))

    def tags(self, tags: dict[str, str]) -> None:
        self.flush()
        self._call("tags", dict(tags={k: str(v) for k, v in tags.items()}))

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call("finish", dict(status=status))

    # -- machinery -------------------------------------------------------------------------
    def _call(self, op: str, args: dict) -> None:
        if self._live_at is not None and time.monotonic() >= self._live_at:
            self._live_at, self.offline = None, False   # the deferral is over: send what was kept
            self.replay_pending()
        if not self.offline:
            for attempt in range(RETRIES):
                try:
                    _import_store()   # seconds of imports, outside the lock other jobs wait on
                    with _lock():
                        self._do(op, args)
                    return
                except Exception as err:  # noqa: BLE001 - any store failure is retried, then kept
                    last = err
                    time.sleep(min(2**attempt, 5))
            self.offline = True
            log.warning("MLflow store %s unreachable (%s): this run's calls are kept in %s and "
                        "replayed by the next stage or `python -m pipeline.tracking --replay`",
                        tracking_uri(), str(last)[:200], self.run_dir / PENDING)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / PENDING, "a") as f:
            f.write(json.dumps({"op": op, "args": args, "key": self.key}) + "\n")

    def _do(self, op: str, a: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag
        client = self._get_client()
        if op == "open":
            self._open(client, a)
            return
        if self.run_id is None:
            raise RuntimeError("no MLflow run open")
        if op == "metrics":
            ms = [Metric(k, v, ts, step or 0) for values, step, ts in a["batch"]
                  for k, v in values.items()]
            for i in range(0, len(ms), 1000):  # MLflow's limit per log_batch call
                client.log_batch(self.run_id, metrics=ms[i:i + 1000])
        elif op == "artifact":
            client.log_artifact(self.run_id, a["path"], a["subdir"])
        elif op == "tags":
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in a["tags"].items()])
        elif op == "finish":
            client.set_terminated(self.run_id, a["status"])
        _ = Param  # params are logged at open

    def _get_client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=tracking_uri())
        return self._client

    def _open(self, client, a: dict) -> None:
        from mlflow.entities import Param, RunTag
        exp = client.get_experiment_by_name(a["dataset"])
        if exp is None:
            location = None
            if tracking_uri().startswith("sqlite:///"):
                location = (Path("mlartifacts").resolve() / a["dataset"]).as_uri()
            exp_id = client.create_experiment(a["dataset"], artifact_location=location)
        else:
            exp_id = exp.experiment_id
        found = client.search_runs([exp_id], f"tags.`gm.run_key` = '{self.key}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            if a["create"]:  # a new training run of this key: keep history, open a new run
                if found[0].data.tags.get("gm.params_hash") != a["tags"].get("gm.params_hash") \
                        or found[0].info.status == "FINISHED":
                    self.run_id = None
        if self.run_id is None:
            if not a["create"]:
                raise RuntimeError(f"no MLflow run for {self.key}; run the train stage first")
            tags = {"gm.run_key": self.key, "gm.dataset": a["dataset"], "gm.model": a["model"],
                    "gm.seed": str(a["seed"])} | a["tags"]
            run = client.create_run(exp_id, run_name=f"{a['model']}-seed{a['seed']}", tags=tags)
            self.run_id = run.info.run_id
            items = [Param(k[:250], v[:6000]) for k, v in a["params"].items()]
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=items[i:i + 100])
        else:
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in a["tags"].items()])

    def replay_pending(self) -> int:
        """Send calls kept from an earlier outage; returns how many were replayed."""
        path = self.run_dir / PENDING
        if not path.exists():
            return 0
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path.unlink()
        for e in entries:
            self._call(e["op"], e["args"])
        log.info("replayed %d pending MLflow calls for %s", len(entries), self.key)
        return len(entries)


def pending_runs(root: Path = Path("results")) -> list[Path]:
    """Run directories that still hold MLflow calls not yet logged."""
    return sorted(p.parent for p in Path(root).glob(f"**/{PENDING}"))


def replay_all(dirs: list[Path] | None = None) -> list[Path]:
    """Send the pending calls of ``dirs`` (default: every run dir that has some); returns the
    dirs still pending afterwards.  The first dir whose calls stay pending (store unreachable,
    after its retries) ends the pass: the others are not tried, so an outage costs seconds,
    not seconds per run."""
    dirs = pending_runs() if dirs is None else list(dirs)
    for i, d in enumerate(dirs):
        ds, model, seed = d.parts[-3], d.parts[-2], int(d.parts[-1].removeprefix("seed"))
        RunLogger(d, ds, model, seed, create=False)
        if (d / PENDING).exists():
            return dirs[i:]
    return []


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Send MLflow calls kept in pending files.")
    ap.add_argument("--replay", nargs="*", default=None, help="run dirs (default: all pending)")
    args = ap.parse_args(argv)
    dirs = [Path(d) for d in args.replay] if args.replay else pending_runs()
    left = replay_all(dirs)
    print(f"replayed {len(dirs) - len(left)} run dirs; {len(left)} still pending")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
