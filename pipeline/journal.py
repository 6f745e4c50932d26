"""Write-ahead journal of one run directory's MLflow calls: ``<run dir>/mlflow_journal.jsonl``.

Every MLflow call of a run is appended here BEFORE it is sent, and acknowledged here AFTER the
store confirmed it.  A kill at any moment therefore loses nothing: a call without its
acknowledgement is sent again, and pipeline/tracking.py makes sending again harmless.  No call
is removed before its acknowledgement: :meth:`Journal.compact` drops only runs every call of
which was acknowledged, once a newer training of the directory replaced them.

One JSON object per line, written with one ``os.write`` on an O_APPEND descriptor; a line torn
by a kill is skipped, and the next append starts on a fresh line:

  {"id": "<session>:<n>", "s": "<session>", "op": ..., "args": {...}, "t": <ms>}   a call
  {"ack": "<id>", "run_id": "<MLflow run id>"}          the store took call <id>
  {"fail": "<id>", "error": "...", "t": <ms>}           its last attempt failed, and why

A session is one :class:`pipeline.tracking.RunLogger` (one stage process).  ``s`` routes a call
to the MLflow run named by that session's ``open`` call, whose args hold the run's ``uid`` (its
``gm.run_uid`` tag; None for a session that attaches to the latest run of the directory), the
store (``uri``; None: the default SQLite file), the stage's real start time, its params, tags
and metric ``scope``.  Calls of one run (one uid) are sent in journal order; runs are independent.

Writers hold ``mlflow_journal.lock`` (a ``filelock`` lock, which the kernel releases when its
process dies) while they append or send.  Imports no MLflow (deferred stages stay cheap).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

NAME = "mlflow_journal.jsonl"
LOCK = "mlflow_journal.lock"
LEGACY = "mlflow_pending.jsonl"     # the pending file of gm-bench before the journal


@dataclass(frozen=True)
class Call:
    id: str        # "<session>:<n>", unique
    s: str         # the session whose run the call goes to
    op: str        # open | metrics | tags | artifact | finish
    args: dict
    t: int         # wall-clock ms when the call was made


class State:
    """What a journal says: its calls in order, which were acknowledged, the last failures."""

    def __init__(self):
        self.calls: dict[str, Call] = {}
        self.acked: dict[str, str | None] = {}      # call id -> run id the store answered
        self.failed: dict[str, dict] = {}           # call id -> its last fail record
        self.opens: dict[str, Call] = {}            # session -> its open call

    def add(self, rec: dict) -> None:
        if "ack" in rec:
            self.acked[rec["ack"]] = rec.get("run_id")
        elif "fail" in rec:
            self.failed[rec["fail"]] = rec
        elif "op" in rec:
            call = Call(rec["id"], rec["s"], rec["op"], rec["args"], rec.get("t", 0))
            self.calls[call.id] = call
            if call.op == "open":
                self.opens.setdefault(call.s, call)

    # -- routing ------------------------------------------------------------------------------
    def open_of(self, call: Call) -> Call | None:
        return self.opens.get(call.s)

    def group(self, call: Call) -> str:
        """The run a call belongs to: its session's uid, else the session itself."""
        op = self.open_of(call)
        uid = op.args.get("uid") if op else None
        return uid or f"session:{call.s}"

    def run_id(self, session: str) -> str | None:
        """The MLflow run id of ``session``, once the store acknowledged its open."""
        op = self.opens.get(session)
        return self.acked.get(op.id) if op else None

    # -- status -------------------------------------------------------------------------------
    def pending(self) -> list[Call]:
        return [c for c in self.calls.values() if c.id not in self.acked]

    def latest_train(self) -> Call | None:
        """The open call of the newest training session (the run evaluation adds to)."""
        opens = [c for c in self.opens.values() if c.args.get("create")]
        return opens[-1] if opens else None

    def unfinished_runs(self, except_uid: str) -> dict[str, Call]:
        """uid -> open call of each training run other than ``except_uid`` with no finish call
        (its process was killed): a fresh training supersedes them."""
        finished = {self.group(c) for c in self.calls.values() if c.op == "finish"}
        return {c.args["uid"]: c for c in self.opens.values()
                if c.args.get("create") and c.args["uid"] not in finished | {except_uid}}

    def last_time(self, group: str) -> int:
        return max((c.t for c in self.calls.values() if self.group(c) == group), default=0)

    def recorded(self, uid: str | None, scope: str | None) -> set:
        """Metric identities already journaled for run ``uid``: (key, step) of sessions with
        the same ``scope``; with scope None, (key, step, value) of every session of the run."""
        out = set()
        if uid is None:
            return out
        for c in self.calls.values():
            op = self.open_of(c)
            if c.op != "metrics" or op is None or op.args.get("uid") != uid:
                continue
            if scope is not None and op.args.get("scope") != scope:
                continue
            for values, step, _ts in c.args["batch"]:
                out.update((k, step) if scope is not None else (k, step, v)
                           for k, v in values.items())
        return out


class Journal:
    """The journal file of one run directory, read incrementally (only appended bytes)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.path = self.dir / NAME
        self._lock = FileLock(str(self.dir / LOCK), timeout=-1)
        self._state, self._pos, self._ino = State(), 0, None

    @contextlib.contextmanager
    def lock(self, timeout: float = -1):
        """Hold the directory's journal lock (reentrant within this object)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock.acquire(timeout=timeout):
            self._migrate_legacy()
            yield self

    def state(self) -> State:
        """The journal as it is now (new lines parsed since the last call)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._state, self._pos, self._ino = State(), 0, None
            return self._state
        if st.st_ino != self._ino or st.st_size < self._pos:       # replaced by compact()
            self._state, self._pos, self._ino = State(), 0, st.st_ino
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]         # a torn last line waits for its "\n"
        self._pos += len(complete)
        for line in complete.splitlines():
            try:
                self._state.add(json.loads(line))
            except (ValueError, KeyError, TypeError):   # a line torn by a kill
                continue
        return self._state

    def append(self, *records: dict) -> None:
        """Append records as lines (call under :meth:`lock`)."""
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data                     # end the line a kill tore
            os.write(fd, data)
        finally:
            os.close(fd)

    def compact(self, keep_uid: str) -> int:
        """Drop the runs (groups) other than ``keep_uid`` whose calls were all acknowledged;
        returns how many calls were dropped (call under :meth:`lock`)."""
        state = self.state()
        pending = {state.group(c) for c in state.pending()}
        keep = {state.group(c) for c in state.calls.values()} & (pending | {keep_uid})
        calls = [c for c in state.calls.values() if state.group(c) in keep]
        if len(calls) == len(state.calls):
            return 0
        records = []
        for c in calls:
            records.append({"id": c.id, "s": c.s, "op": c.op, "args": c.args, "t": c.t})
            if c.id in state.acked:
                records.append({"ack": c.id, "run_id": state.acked[c.id]})
            elif c.id in state.failed:
                records.append(state.failed[c.id])
        tmp = self.path.with_name(f".{NAME}.tmp")
        tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        os.replace(tmp, self.path)
        return len(state.calls) - len(calls)

    def _migrate_legacy(self) -> None:
        """Turn an old ``mlflow_pending.jsonl`` (calls not yet sent, no ids) into journal calls
        of one session attached to the directory's latest run; then remove it."""
        old = self.dir / LEGACY
        if not old.exists():
            return
        lines = [json.loads(x) for x in old.read_text().splitlines() if x.strip()]
        s = "legacy" + str(int(old.stat().st_mtime_ns))[-8:]
        records = []
        if lines and lines[0]["op"] != "open":
            ds, model, seed = lines[0]["key"].split("/")
            lines.insert(0, {"op": "open", "args": dict(dataset=ds, model=model,
                             seed=int(seed.removeprefix("seed")), tags={}, params={},
                             create=False)})
        for i, e in enumerate(lines):
            args = dict(e["args"])
            if e["op"] == "open":
                args |= {"uid": None, "uri": os.environ.get("MLFLOW_TRACKING_URI") or None,
                         "scope": None, "start": None}
            records.append({"id": f"{s}:{i}", "s": s, "op": e["op"], "args": args, "t": 0})
        self.append(*records)
        old.unlink()
