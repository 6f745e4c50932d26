"""Memory a model needs to train, estimated before any work starts and without allocating it.

The model is built on PyTorch's meta device (tensors with shapes and dtypes, no storage), its
parameters counted with their gradients and two Adam moments, and the sum compared with the
machine's memory.  The train stage (``run_stage(..., memory=True)``) and the Snakefile
(:func:`pipeline.preflight.check_config`) call :func:`check_memory`; a model too large raises a
ConfigError naming the size field, the estimate and the machine's memory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import signal
import sys
import threading
from pathlib import Path

from gm.config import make_config
from gm.errors import ConfigError
from gm.io import write_json
from gm.registry import model_class
from pipeline import code
from pipeline.params import train_settings
from pipeline.paths import processed_path

TRAINING_COPIES = 4   # a parameter, its gradient and two Adam moments (the largest optimiser state)


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical RAM (os.sysconf), or its cgroup's
    limit when lower (a container, a SLURM job); ``GM_MEMORY_GB`` overrides both (e.g. when
    Snakemake runs on a login node smaller than the nodes that train)."""
    if os.environ.get("GM_MEMORY_GB"):
        return int(float(os.environ["GM_MEMORY_GB"]) * 2 ** 30)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(f).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


BUILD_SECONDS = 5.0  # a model whose meta build takes more CPU than this is absurdly large


class _TooSlow(BaseException):
    """Raised by the timer inside a meta build (BaseException: model code cannot swallow it)."""


_MODEL_CODE = str(Path(__file__).resolve().parents[1] / "gm") + os.sep
_NOT_PLAIN = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _is_model_frame(frame) -> bool:
    """A plain function's frame in the gm package (a model's own code)."""
    code = frame.f_code
    return code.co_filename.startswith(_MODEL_CODE) and not code.co_flags & _NOT_PLAIN


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TooSlow in the block after ``seconds`` of this process's CPU time (ITIMER_PROF:
    a loaded machine's wall clock would refuse a normal model; only in the main thread and
    when no other profiling timer is running, else no limit).  The timer only marks the time
    as up: _TooSlow is raised at the next line of model code (gm/), or at the block's end.
    Raised from the signal handler itself it could land inside torch's own context managers
    (between a state change and its ``try``) and leave the process with gradients off or the
    meta device's mode popped."""
    usable = (os.name == "posix" and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_PROF)[0] == 0)
    if not usable:
        yield
        return
    expired, traced = False, []

    def raise_here(frame, event, arg):  # a model frame's tracer: stop at its next line
        if event == "line":
            raise _TooSlow
        return raise_here

    def on_call(frame, event, arg):     # the thread's tracer: trace model frames only
        return raise_here if _is_model_frame(frame) else None

    def expire(signum, frame):
        nonlocal expired
        expired = True
        while frame is not None:        # model frames already running
            if _is_model_frame(frame):
                traced.append((frame, frame.f_trace))
                frame.f_trace = raise_here
            frame = frame.f_back
        sys.settrace(on_call)

    previous_trace = sys.gettrace()
    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        sys.settrace(previous_trace)
        for frame, trace in traced:
            frame.f_trace = trace
    if expired:
        raise _TooSlow


@functools.cache
def _warm(registered: str, data_dim: int) -> None:
    """Build ``registered``'s default config once on the meta device, untimed: the first build
    pays one-off costs (lazy imports, kernel registration) that are not the model's size."""
    import torch
    cls = model_class(registered)
    try:
        with torch.device("meta"), _values_skipped():
            cls(data_dim, make_config(cls.Config, {}))
    except Exception:  # noqa: BLE001 - a default that does not fit data_dim: nothing warmed
        pass


def memory_estimate(registered: str, data_dim: int, hparams: dict) -> tuple[int, int] | None:
    """:func:`_estimate`, kept in a cache on disk (:func:`cache_path`) under a hash of the
    model's name, ``data_dim``, ``hparams``, the sha256 of every source file it trains with
    (pipeline/code.py) and torch's version, so a run of unchanged settings and code builds no
    model: the first build on the meta device imports torch._dynamo (~1 s of CPU at every
    ``snakemake`` start).  A build over BUILD_SECONDS is not cached."""
    model_class(registered)   # an unknown model: its ConfigError, before any file is read
    key = _cache_key(registered, data_dim, hparams)
    hit = _read_cache().get(key, ())
    if hit is None or (isinstance(hit, list) and len(hit) == 2
                       and all(type(v) is int for v in hit)):
        return None if hit is None else (hit[0], hit[1])
    estimate = _estimate(registered, data_dim, hparams)
    _write_cache(key, estimate)
    return estimate


def cache_path() -> Path | None:
    """$GM_CACHE_DIR, else $XDG_CACHE_HOME/gm-bench, else ~/.cache/gm-bench; the file
    memory-estimates.json there.  None (no cache) without a home directory (a container's
    user with no HOME and no passwd entry)."""
    root = os.environ.get("GM_CACHE_DIR")
    if not root:
        try:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        except (RuntimeError, KeyError):
            return None
        root = Path(base) / "gm-bench"
    return Path(root) / "memory-estimates.json"


def _cache_key(registered: str, data_dim: int, hparams: dict) -> str:
    import torch
    text = json.dumps([registered, data_dim, hparams, _code_digest(registered),
                       torch.__version__], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _code_digest(registered: str) -> str:
    """sha256 over the model's train-stage source files (pipeline/code.py's fingerprint:
    package-relative names, so a copy of the project in another folder shares the cache),
    hashed once per process."""
    return code.fingerprint(code.stage_paths("train", registered))["sha256"]


def _read_cache() -> dict:
    path = cache_path()
    try:
        cache = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):   # none yet, unreadable or torn: estimate again
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(key: str, estimate: tuple[int, int] | None) -> None:
    """Add one entry (atomically: parallel stages may write at once; a lost entry is only
    estimated again).  A cache that cannot be written is skipped."""
    path = cache_path()
    if path is None:
        return
    try:
        write_json(path, _read_cache() | {key: None if estimate is None else list(estimate)})
    except OSError:
        pass


def _estimate(registered: str, data_dim: int, hparams: dict) -> tuple[int, int] | None:
    """(bytes, parameters) that training model ``registered`` needs at least, found without
    allocating it: the model is built on the meta device and its parameters counted x
    TRAINING_COPIES (value, gradient, two Adam moments), plus its buffers; activations are not
    counted.  None when it cannot be built there (a config that does not fit ``data_dim``,
    or a model that reads values while it builds, e.g. MADE's masks).  Raises _TooSlow when
    the build takes over BUILD_SECONDS of CPU (e.g. a million layers: Python objects, not
    tensors), after an untimed warm-up build of the model's defaults (:func:`_warm`)."""
    import torch
    cls = model_class(registered)   # imports every model module outside the meta context, so
    try:                            # no module-level tensor is created on the meta device
        config = make_config(cls.Config, hparams)
        _warm(registered, data_dim)
        with _time_limit(BUILD_SECONDS), torch.device("meta"), _values_skipped():
            model = cls(data_dim, config)
    except Exception:  # noqa: BLE001 - any failure means: cannot estimate here
        return None
    params_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    buffers_bytes = sum(t.numel() * t.element_size() for t in model.buffers())
    n = sum(t.numel() for t in model.parameters())
    return TRAINING_COPIES * params_bytes + buffers_bytes, n


@contextlib.contextmanager
def _values_skipped():
    """Skip Tensor.normal_ while a model is built on the meta device: meta tensors hold no
    values, and torch's meta kernel for normal_ imports torch._dynamo (~1.3 s of CPU, which
    every train process would pay)."""
    import torch
    normal_ = torch.Tensor.normal_
    torch.Tensor.normal_ = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.normal_ = normal_


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def _size_field(registered: str, data_dim: int, block: dict) -> str | None:
    """The integer field of a model block whose reset to its default shrinks the memory
    estimate most (the size that makes it absurd); failing that, the one furthest above its
    default; None when the block sets no integer above its default."""
    def largest(v):  # an integer size, or the largest of a list of them (layer widths)
        items = v if isinstance(v, (list, tuple)) else [v]
        ints = [x for x in items if isinstance(x, int) and not isinstance(x, bool)]
        return max(ints) if ints and len(ints) == len(items) else None

    defaults = {f.name: f.default for f in dataclasses.fields(model_class(registered).Config)}
    sizes = {k: (largest(v), largest(defaults[k])) for k, v in block.items()
             if k in defaults and largest(v) is not None and largest(defaults[k]) is not None
             and largest(v) > largest(defaults[k])}
    best = None
    for key in sizes:
        default = defaults[key]
        try:
            trial = memory_estimate(registered, data_dim, block | {
                key: list(default) if isinstance(default, tuple) else default})
        except _TooSlow:
            continue
        if trial is not None and (best is None or trial[0] < best[0]):
            best = (trial[0], key)
    if best is not None:
        return best[1]
    return max(sizes, key=lambda k: sizes[k][0] / max(sizes[k][1], 1), default=None)


def check_memory(params: dict, pairs: list[tuple[str, str]] | None = None) -> None:
    """Refuse, before any work starts, a run whose model needs more memory than this machine
    has (:func:`memory_estimate` vs :func:`machine_memory`), or is too large to even build
    (over BUILD_SECONDS on the meta device); ``pairs``: the (dataset, run name)s to check
    (default: every run).  The data dimension is read from the prepared dataset's array
    header; before prepare it is taken as 1, so the estimate is a lower bound.

    Milliseconds per model; the evaluate stage does not call this."""
    from gm.data.splits import data_dim_of
    if pairs is None:
        pairs = list(dict.fromkeys((r["dataset"], r["model"]) for r in params["runs"]))
    limit = machine_memory()
    for ds, name in pairs:
        settings = train_settings(params, name, ds)
        registered, block = settings["base"], settings["model"]
        dim = data_dim_of(processed_path(ds))
        try:
            estimate, problem = memory_estimate(registered, dim or 1, block), None
        except _TooSlow:
            estimate, problem = None, (f"is absurdly large: building the model alone (without "
                                       f"its tensors) takes over {BUILD_SECONDS:g} s of CPU")
        if estimate is not None and estimate[0] > limit:
            need, n = estimate
            problem = (f"needs {'' if dim else 'at least '}{_gib(need)} of memory to train on "
                       f"{ds} ({n:.3g} parameters, each with its gradient and two Adam "
                       f"moments), more than this machine's {_gib(limit)}")
        if problem is None:
            continue
        key = _size_field(registered, dim or 1, block)
        if key is None:
            raise ConfigError(f"models.{name}.model", problem, "use smaller sizes")
        raise ConfigError(f"models.{name}.model.{key}", f"{block[key]} {problem}", "lower it")
