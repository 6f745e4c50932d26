"""Every MLflow call of gm-bench lives here; stages talk to it through :class:`RunLogger`.

Store: ``MLFLOW_TRACKING_URI`` if set (e.g. a shared ``mlflow server``), else the SQLite file
``mlflow.db`` in the working directory (MLflow 3's default), with artifacts under
``mlartifacts/``.  One experiment per dataset, one MLflow run per training of a (dataset,
model, seed) named ``<model>-seed<s>``; evaluate adds to the newest one.

Nothing lost, nothing twice:
- Journal first.  Every call is appended to the run directory's journal
  (``mlflow_journal.jsonl``, pipeline/journal.py) before it is sent and acknowledged there after
  the store confirmed it; a kill, an outage or a replay at any moment leaves each call either
  acknowledged or still in the journal, sent by the next stage or ``--replay``.
- Idempotent calls, so that sending a call again (killed between send and acknowledgement)
  changes nothing: a run is found again by its ``gm.run_uid`` tag before one is created; metrics
  carry their explicit step and the timestamp of the moment they were measured, and the SQL store
  keeps one row per (key, timestamp, step, value); params are logged only where missing; tags,
  artifacts and the end status overwrite themselves.
- One metric per step.  A training run has a uid, kept in its checkpoint: a resume continues the
  same MLflow run, and the metric steps the journal already holds for the run (killed process
  included) are not logged again (identity (key, step) within a ``scope``, e.g. "train"); a
  fresh training (no checkpoint) starts a new run with a new uid and marks an older run of the
  directory that was never finished KILLED.
- Real times: a run starts at its training stage's real start time (``create_run(start_time=)``)
  and ends when its last stage finished (``set_terminated(end_time=)``), however late the calls
  are sent; metrics keep the time they were measured.

Deferred calls: importing MLflow and opening its store cost ~3.5 s of CPU per process, more
than most default trainings and evaluations take.  A RunLogger made with ``defer=S`` only
journals its calls for the first S seconds and imports nothing; the first call after that goes
live, sending what was kept first.  Training defers DEFER_SECONDS (``GM_MLFLOW_DEFER_SECONDS``,
default 60): a longer training shows live curves, a shorter one is logged whole later.  Evaluate
defers everything.  The report stage sends every pending call (:func:`replay_all`), so every run
is complete in MLflow when the pipeline ends.  Per-epoch metrics are queued and sent every
FLUSH_SECONDS (and before checkpoints), so the UI shows live curves without a write per epoch.

Failures: a call that still fails after RETRIES attempts stays in the journal with the reason
(``fail`` record).  A probe then tells a store-wide failure (unreachable, locked, read-only:
the rest of that store's runs are not tried in this pass, an outage costs seconds) from one
run's own (e.g. its run deleted in the store: the other runs go on).  A run is sent to the store
it was created on.  :func:`pending_summary` names, per run, what is pending and why.

Concurrency: with the local SQLite store, every write holds a file lock (``mlflow.db.lock``),
so ``snakemake --cores 8`` never meets "database is locked".
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
import uuid
from pathlib import Path
from typing import ClassVar

from filelock import FileLock

from pipeline.journal import NAME as JOURNAL
from pipeline.journal import Call, Journal, State

log = logging.getLogger("gm-bench")
RETRIES = int(os.environ.get("GM_MLFLOW_RETRIES", "3"))
FLUSH_SECONDS = float(os.environ.get("GM_MLFLOW_FLUSH_SECONDS", "2"))  # queued metrics' cadence
DEFER_SECONDS = float(os.environ.get("GM_MLFLOW_DEFER_SECONDS", "60"))  # training (see above)
# one attempt against a dead server should cost seconds, not MLflow's minutes of HTTP retries
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def tracking_uri(recorded: str | None = None) -> str:
    """The store a call goes to: the one its run was recorded with, else the configured one."""
    return (recorded or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path('mlflow.db').resolve()}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty() -> bool:
    """Whether tracked files differ from HEAD (False outside a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
        return out.returncode == 0 and bool(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


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


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- one store ------------------------------------------------------------------------------------
class StoreError(Exception):
    """A call failed after its retries; ``store_wide`` when the store itself failed a probe."""

    def __init__(self, message: str, store_wide: bool):
        super().__init__(message)
        self.store_wide = store_wide


class Store:
    """An MLflow tracking store (one URI): its client, its write lock, the calls' semantics."""

    _all: ClassVar[dict[str, Store]] = {}

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    @classmethod
    def of(cls, uri: str) -> Store:
        if uri not in cls._all:
            cls._all[uri] = cls(uri)
        return cls._all[uri]

    def imports(self) -> None:
        """Import MLflow (seconds of CPU: done outside the lock other jobs wait on)."""
        import mlflow.tracking  # noqa: F401
        if self.uri.startswith("sqlite:"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    def client(self):
        """The client (call under :meth:`lock`: a new SQLite store migrates its schema)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=self.uri)
            self._client.search_experiments(max_results=1)     # opens (or creates) the store
        return self._client

    def lock(self):
        """Writers to the local SQLite file take turns (no "database is locked")."""
        if self.uri.startswith("sqlite:///"):
            return FileLock(self.uri[len("sqlite:///"):].split("?")[0] + ".lock", timeout=600)
        return contextlib.nullcontext()

    def send(self, state: State, call: Call) -> str | None:
        """Send one journaled call, retried; returns the run id (for open).  Raises StoreError."""
        last = None
        for attempt in range(RETRIES):
            try:
                self.imports()
                with self.lock():
                    return self._do(self.client(), state, call)
            except Exception as err:  # noqa: BLE001 - any store failure is retried, then kept
                last = err
                if attempt + 1 < RETRIES:
                    time.sleep(min(2**attempt, 5))
        what = f"call {call.id.rpartition(':')[2]} ({call.op})"
        down = self.probe(state.open_of(call))
        if down:
            raise StoreError(f"store {self.uri} unreachable or not writable: {_short(down)}", True)
        raise StoreError(f"store {self.uri} refused {what}: {_short(last)}", False)

    def probe(self, open_call: Call | None) -> str | None:
        """None when the store answers a read and a harmless write, else the error."""
        try:
            self.imports()
            with self.lock():
                client = self.client()
                exp = client.get_experiment_by_name(open_call.args["dataset"]) if open_call \
                    else None
                if exp is None:
                    client.search_experiments(max_results=1)
                else:
                    client.set_experiment_tag(exp.experiment_id, "gm.store_probe",
                                              str(_now_ms()))
            return None
        except Exception as err:  # noqa: BLE001
            return str(err) or type(err).__name__

    def _do(self, client, state: State, call: Call) -> str | None:
        from mlflow.entities import Metric, RunTag
        a = call.args
        if call.op == "open":
            return self._open(client, a)
        run_id = state.run_id(call.s)
        if run_id is None:
            raise RuntimeError("its run was never opened")
        if call.op == "metrics":
            ms = [Metric(k, v, ts, step or 0) for values, step, ts in a["batch"]
                  for k, v in values.items()]
            for i in range(0, len(ms), 1000):  # MLflow's limit per log_batch call
                client.log_batch(run_id, metrics=ms[i:i + 1000])
        elif call.op == "tags":
            tags = [RunTag(k, v) for k, v in a["tags"].items()]
            for i in range(0, len(tags), 100):
                client.log_batch(run_id, tags=tags[i:i + 100])
        elif call.op == "artifact":
            if Path(a["path"]).exists():
                client.log_artifact(run_id, a["path"], a["subdir"])
            else:   # removed since (e.g. a newer stage rewrote the directory): say so on the run
                client.set_tag(run_id, f"gm.artifact_missing.{Path(a['path']).name}",
                               f"{a['path']} was gone when its call was sent")
        elif call.op == "finish":
            client.set_terminated(run_id, a["status"], end_time=a.get("end"))
        return run_id

    def _open(self, client, a: dict) -> str:
        """The run of an open call: found by its uid (or, attaching without one, the newest run
        of its key), else created with the stage's real start time; then its params and tags."""
        from mlflow.entities import Param, RunTag, ViewType
        exp = client.get_experiment_by_name(a["dataset"])
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path("mlartifacts").resolve() / a["dataset"]).as_uri()
            try:
                exp_id = client.create_experiment(a["dataset"], artifact_location=location)
            except Exception:  # noqa: BLE001 - another job created it meanwhile
                exp_id = client.get_experiment_by_name(a["dataset"]).experiment_id
        else:
            exp_id = exp.experiment_id
        key = f"{a['dataset']}/{a['model']}/seed{a['seed']}"
        query = (f"tags.`gm.run_uid` = '{a['uid']}'" if a.get("uid")
                 else f"tags.`gm.run_key` = '{key}'")
        found = client.search_runs([exp_id], query, run_view_type=ViewType.ALL,
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if found and found[0].info.lifecycle_stage == "deleted":
            raise RuntimeError(f"run {found[0].info.run_id} of {key} was deleted in this store; "
                               f"`mlflow runs restore --run-id {found[0].info.run_id}` lets its "
                               "calls through")
        if found:
            run = found[0]
        elif not a.get("create"):
            raise RuntimeError(f"no MLflow run for {key}"
                               + (f" (uid {a['uid']})" if a.get("uid") else "")
                               + " in this store; run the train stage first")
        else:
            tags = {"gm.run_key": key, "gm.dataset": a["dataset"], "gm.model": a["model"],
                    "gm.seed": str(a["seed"])} | ({"gm.run_uid": a["uid"]} if a.get("uid")
                                                 else {}) | a["tags"]
            run = client.create_run(exp_id, start_time=a.get("start"),
                                    run_name=f"{a['model']}-seed{a['seed']}", tags=tags)
        run_id = run.info.run_id
        if a.get("create"):         # only those missing: MLflow params never change
            have = run.data.params
            items = [Param(k[:250], v[:6000]) for k, v in a["params"].items()
                     if k[:250] not in have]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i:i + 100])
        if found and a["tags"]:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in a["tags"].items()])
        return run_id


def _short(err) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


# --- sending a journal ----------------------------------------------------------------------------
def send_pending(journal: Journal, *, groups: set[str] | None = None,
                 down: dict[str, str] | None = None) -> dict[str, str]:
    """Send the unacknowledged calls of ``journal`` (of runs ``groups``, default all), each run's
    in order, each acknowledged as the store takes it.  A run whose call fails stops (its later
    calls wait) and the others go on; ``down`` (store URI -> error) collects stores that failed
    their probe, whose runs are then not tried.  Returns {run group: cause} of runs left pending.
    """
    down = {} if down is None else down
    stuck: dict[str, str] = {}
    while True:
        with journal.lock():
            state = journal.state()
            call = next((c for c in state.pending() if state.group(c) not in stuck
                         and (groups is None or state.group(c) in groups)), None)
            if call is None:
                return stuck
            group = state.group(call)
            op = state.open_of(call)
            uri = tracking_uri(op.args.get("uri") if op else None)
            if uri in down:
                cause = f"not tried: store {uri} failed earlier in this pass ({_short(down[uri])})"
                journal.append({"fail": call.id, "error": cause, "t": _now_ms()})
                stuck[group] = cause
                continue
            try:
                run_id = Store.of(uri).send(state, call)
            except StoreError as err:
                journal.append({"fail": call.id, "error": str(err), "t": _now_ms()})
                stuck[group] = str(err)
                if err.store_wide:
                    down[uri] = str(err)
                continue
            journal.append({"ack": call.id, "run_id": run_id})


# --- the stages' logger ---------------------------------------------------------------------------
class RunLogger:
    """Logs one stage's calls for one (dataset, model, seed) run directory.

    ``create=True`` (train): the calls go to run ``run_uid`` (a resume passes the uid kept in its
    checkpoint), or to a new run.  ``create=False`` (evaluate): to the directory's newest training
    run.  ``scope`` names what the metrics measure: within a scope each (key, step) of the run is
    logged once (the first measurement stands); without one, only exact repeats (same key, step
    and value) are dropped.  ``start_time``: the stage's real start (ms), default now.
    """

    def __init__(self, run_dir: Path, dataset: str, model: str, seed: int, *,
                 tags: dict | None = None, params: dict | None = None, create: bool = True,
                 defer: float = 0.0, run_uid: str | None = None, scope: str | None = None,
                 start_time: int | None = None):
        self.run_dir = Path(run_dir)
        self.key = f"{dataset}/{model}/seed{seed}"
        self.journal = Journal(self.run_dir)
        self.session = uuid.uuid4().hex[:12]
        self.scope = scope
        self._n = 0
        # offline: calls are only journaled (while deferred, or for good after a call failed)
        self.offline = defer > 0
        self._live_at = time.monotonic() + defer if defer > 0 else None
        self._queue: list = []
        self._flushed = time.monotonic()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        with self.journal.lock():
            state = self.journal.state()
            if create:
                self.uid = run_uid or uuid.uuid4().hex
            else:               # the newest training run, in the store it was created on
                train = state.latest_train()
                if train is not None:
                    self.uid, uri = train.args.get("uid"), train.args.get("uri")
                else:
                    self.uid = None
            self._recorded = state.recorded(self.uid, scope)
            if create and run_uid is None:
                self._supersede(state)
            self._append("open", dict(
                uid=self.uid, create=create, uri=uri, dataset=dataset, model=model, seed=seed,
                scope=scope, start=start_time or _now_ms(), tags={k: str(v) for k, v in (tags or {}).items()},
                params=_flatten(params or {})))
            if create:
                self.journal.compact(keep_uid=self.uid)
        self.group = self.uid or f"session:{self.session}"
        if not self.offline:
            self._send(everything=True)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once the store acknowledged this session's open."""
        return self.journal.state().run_id(self.session)

    # -- the calls -------------------------------------------------------------------------
    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue metrics at ``step`` (default 0); they are sent at most every FLUSH_SECONDS.
        A (key, step) the run already holds in this scope is dropped (see the class)."""
        step = int(step or 0)
        keep = {}
        for k, v in metrics.items():
            if v is None:
                continue
            ident = (k, step) if self.scope is not None else (k, step, float(v))
            if ident not in self._recorded:
                self._recorded.add(ident)
                keep[k] = float(v)
        if keep:
            self._queue.append([keep, step, _now_ms()])
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
        """End the run (status, and this moment as its end time)."""
        self.flush()
        self._call("finish", dict(status=status, end=_now_ms()))

    # -- machinery -------------------------------------------------------------------------
    def _append(self, op: str, args: dict, session: str | None = None) -> None:
        self.journal.append({"id": f"{self.session}:{self._n}", "s": session or self.session,
                             "op": op, "args": args, "t": _now_ms()})
        self._n += 1

    def _supersede(self, state: State) -> None:
        """A fresh training replaces the directory's runs that were never finished (killed
        without a checkpoint to resume from): they end KILLED at their last call's time."""
        for uid, op in state.unfinished_runs(except_uid=self.uid).items():
            self._append("finish", dict(status="KILLED", end=state.last_time(uid) or None),
                         session=op.s)

    def _call(self, op: str, args: dict) -> None:
        everything = False
        if self._live_at is not None and time.monotonic() >= self._live_at:
            self._live_at, self.offline, everything = None, False, True  # send what was kept
        with self.journal.lock():
            self._append(op, args)
        if not self.offline:
            self._send(everything)

    def _send(self, everything: bool) -> None:
        stuck = send_pending(self.journal, groups=None if everything else {self.group})
        if self.group in stuck:
            self.offline = True
            log.warning("MLflow: %s; this run's calls are kept in %s and sent by the report "
                        "stage or `python -m pipeline.tracking --replay`", stuck[self.group],
                        self.journal.path)


# --- replay and status ----------------------------------------------------------------------------
def journal_dirs(root: Path = Path("results")) -> list[Path]:
    root = Path(root)
    return sorted({p.parent for p in root.glob(f"**/{JOURNAL}")}
                  | {p.parent for p in root.glob("**/mlflow_pending.jsonl")})


def pending_runs(root: Path = Path("results")) -> list[Path]:
    """Run directories that still hold MLflow calls the store has not acknowledged."""
    return [s["dir"] for s in pending_summary(root)]


def _cause(state: State, calls: list[Call]) -> str:
    fail = state.failed.get(calls[0].id)
    if fail is not None:
        return fail["error"]
    return ("not sent yet: kept while its stage deferred MLflow (the report stage sends it, "
            "or `python -m pipeline.tracking --replay`)")


def run_status(run_dir: Path) -> dict | None:
    """Pending status of one run directory: None when the store acknowledged every call, else
    {"run": "ds/model/seedS", "dir", "calls": how many wait, "cause": why (the last failure of
    the first waiting call of each MLflow run, or "not sent yet")}."""
    d = Path(run_dir)
    journal = Journal(d)
    if (d / "mlflow_pending.jsonl").exists():
        with journal.lock():
            pass                            # converts a pre-journal pending file
    state = journal.state()
    pending = state.pending()
    if not pending:
        return None
    by_run: dict[str, list[Call]] = {}
    for c in pending:
        by_run.setdefault(state.group(c), []).append(c)
    causes = list(dict.fromkeys(_cause(state, calls) for calls in by_run.values()))
    return {"run": "/".join(d.parts[-3:]), "dir": d, "calls": len(pending),
            "cause": "; ".join(causes)}


def pending_summary(root: Path = Path("results")) -> list[dict]:
    """:func:`run_status` of every run directory under ``root`` with calls still pending."""
    return [s for d in journal_dirs(root) if (s := run_status(d)) is not None]


def replay_all(dirs: list[Path] | None = None) -> list[Path]:
    """Send the pending calls of ``dirs`` (default: every run dir that has some); returns the
    dirs still pending afterwards.  A store that fails its probe is not tried again in this pass
    (an outage costs seconds, not seconds per run); a run that fails on its own does not stop
    the others."""
    dirs = pending_runs() if dirs is None else list(dirs)
    down: dict[str, str] = {}
    left = []
    for d in dirs:
        if send_pending(Journal(d), down=down):
            left.append(d)
    return left


def main(argv=None) -> int:
    import argparse
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    ap = argparse.ArgumentParser(description="Send MLflow calls kept in run journals.")
    ap.add_argument("--replay", nargs="*", default=None, help="run dirs (default: all pending)")
    ap.add_argument("--status", action="store_true", help="list what is pending and why")
    args = ap.parse_args(argv)
    if args.status:
        for s in pending_summary():
            print(f"{s['run']}: {s['calls']} calls pending: {s['cause']}")
        return 0
    dirs = [Path(d) for d in args.replay] if args.replay else pending_runs()
    left = replay_all(dirs)
    for d in left:
        if (s := run_status(d)) is not None:
            print(f"still pending: {s['run']}: {s['calls']} calls: {s['cause']}", file=sys.stderr)
    print(f"replayed {len(dirs) - len(left)} run dirs; {len(left)} still pending")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
