"""What every stage shares: its command line, output paths, device and seeds."""
from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from gm.errors import GmError
from gm.io import InputError, check_writable, read_json
from gm.seeding import derive_seed, make_generator
from pipeline import params as P
from pipeline.memory import check_memory as memory_check
from pipeline.paths import classifier_path, processed_path, raw_dir, run_dir  # noqa: F401

log = logging.getLogger("gm-bench")


def parse(argv, description: str, *, dataset=True, model=False, seed=False) -> argparse.Namespace:
    """Parse the stage's flags (``--dataset D --model M --seed S --params FILE [FILE ...]``).

    Several params files merge in order as Snakemake merges ``--configfile``s (see
    :func:`pipeline.params.merge`); the default is ``$GM_PARAMS`` (files joined by
    ``os.pathsep``, which the Snakefile sets from its ``--configfile``s) or params.yaml."""
    ap = argparse.ArgumentParser(description=description)
    default = P.files(os.environ.get("GM_PARAMS") or "params.yaml")
    ap.add_argument("--params", nargs="+", default=default,
                    help="params files merged in order (default $GM_PARAMS or params.yaml)")
    if dataset:
        ap.add_argument("--dataset", required=True)
    if model:
        ap.add_argument("--model", required=True)
    if seed:
        ap.add_argument("--seed", type=int, required=True, help="seed index from params seeds:")
    return ap.parse_args(argv)


def _process_start() -> float:
    """Epoch seconds at which this process started (Linux: /proc; elsewhere: this import)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def process_cost(compute_cpu_seconds: float) -> dict[str, float]:
    """What this stage process has cost so far: wall seconds since it started, CPU seconds
    (user + system, start-up and imports included), peak resident memory (MB), and the CPU
    seconds of its computation proper (training or evaluation), as train.json and eval.json
    record it under ``cost``.  cpu_seconds - compute_cpu_seconds is the process's fixed cost
    (benchmarks/process_cost.py)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_seconds": round(time.time() - _process_start(), 3),
            "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3),
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "compute_cpu_seconds": round(compute_cpu_seconds, 3)}


def run_stage(fn, argv, description: str, *, writes=None, memory: bool = False,
              **flags) -> int:
    """Parse flags, load+validate params, check the stage can do its work, run
    ``fn(args, params)``; every GmError -> one line ``error: <file>: <problem> (<fix>)``.

    Before ``fn`` starts: ``memory=True`` (the train stage) refuses a model whose estimated
    memory exceeds the machine's (:func:`pipeline.memory.check_memory`), unless the runner
    already checked every run (the Snakefile sets GM_MEMORY_CHECKED=1: building a model on
    torch's meta device imports torch._dynamo, ~1.3 s of CPU per process); the folders it
    writes must be writable (``writes(args)`` -> folders; default: the run folder of a
    ``--model --seed`` stage), so a read-only folder fails before any work, not at the
    first write after it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    args = parse(argv, description, **flags)
    # small models run fastest on one thread, and `--cores 8` runs many stages at once
    torch.set_num_threads(int(os.environ.get("GM_TORCH_THREADS", "1")))
    try:
        params = P.load(args.params)
        _check_target(args, params)
        if memory and os.environ.get("GM_MEMORY_CHECKED") != "1":
            memory_check(params, [(args.dataset, args.model)])
        if writes is not None:
            folders = writes(args)
        elif flags.get("model") and flags.get("seed"):
            folders = [run_dir(args.dataset, args.model, args.seed)]
        else:
            folders = []
        for folder in folders:
            check_writable(folder)
        fn(args, params)
    except GmError as err:
        print(P.error_line(err, args.params), file=sys.stderr)
        return 2
    return 0


def process_main(main) -> None:
    """Run a stage's ``main()`` as the whole process (``python -m pipeline.<stage>``) and exit
    with its status, sparing the interpreter its garbage collections over the ~170,000 objects
    of torch and the imports: they live as long as the process, so they move to the permanent
    generation, which no collection traverses (:func:`gc.freeze`), before the stage runs and
    again before exit, where the interpreter would otherwise collect them several times
    (0.3-0.5 s of CPU per process; benchmarks/process_cost.py).  atexit handlers, logging's
    flush and thread joins run as before; only the finalizers of cyclic garbage left at exit
    are skipped (every stage closes its files in ``with`` blocks).  Not for in-process calls
    of ``main`` (tests): their garbage would never be collected."""
    gc.freeze()
    try:
        status = main()
    finally:
        gc.freeze()
    sys.exit(status)


def _check_target(args, params) -> None:
    """The flags must name a dataset/model/seed the params actually list."""
    from gm.errors import ConfigError
    if getattr(args, "dataset", None) and args.dataset not in params["datasets"]:
        raise ConfigError("--dataset", f"{args.dataset!r} is not listed under datasets:")
    if getattr(args, "model", None):
        if (args.dataset, args.model) not in {(r["dataset"], r["model"]) for r in params["runs"]}:
            raise ConfigError("--model", f"({args.dataset}, {args.model}) is not listed in runs:")
    if getattr(args, "seed", None) is not None and args.seed not in params["seeds"]:
        raise ConfigError("--seed", f"{args.seed} is not listed in seeds: {params['seeds']}")


def rerun(stage: str, dataset: str, model: str | None = None, seed: int | None = None) -> str:
    """The command that rebuilds a stage's output, for the fix of an error message."""
    cmd = f"python -m pipeline.{stage} --dataset {dataset}"
    if model is not None:
        cmd += f" --model {model} --seed {seed}"
    return cmd


def read_train_info(path: Path) -> dict:
    """A run's train.json, checked for what its readers use (evaluate: train_seconds; the
    report: dataset, model, seed and the per-epoch history); a missing, invalid or malformed
    file raises :class:`gm.io.InputError`: ``<file>: <problem> (<fix>)``."""
    path = Path(path)
    parts = path.parts
    command = (rerun("train", parts[-4], parts[-3], parts[-2][4:])
               if len(parts) >= 4 and parts[-2].startswith("seed") else "")
    rerun_it = "rerun the train stage" + (f": {command}" if command else "")
    fix = "delete it and " + rerun_it
    info = read_json(path, fix, missing=rerun_it)
    if not isinstance(info, dict):
        raise InputError(path, f"expected a mapping, got {type(info).__name__}", fix)
    for key, ok, expected in (
            ("dataset", lambda v: isinstance(v, str), "a string"),
            ("model", lambda v: isinstance(v, str), "a string"),
            ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
            ("train_seconds", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
             and math.isfinite(v) and v >= 0, "a finite number >= 0"),
            ("history", lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
             "a list of per-epoch mappings")):
        if key not in info:
            raise InputError(path, f"{key}: missing", fix)
        if not ok(info[key]):
            raise InputError(path, f"{key}: expected {expected}, got {info[key]!r:.80}", fix)
    return info


def device_of(params: dict) -> torch.device:
    """``device: auto`` picks CUDA when present, else the CPU."""
    d = params.get("device", "auto")
    if d == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_GPUS"):
            log.warning("this SLURM job was given a GPU but torch sees no CUDA device: "
                        "training on the CPU (check the node's driver and torch's CUDA build)")
        return torch.device("cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is unavailable: using the CPU", d)
        return torch.device("cpu")
    return torch.device(d)


def stage_generator(params: dict, stage: str, dataset: str, model: str = "", seed: int = 0,
                    device: torch.device | str = "cpu") -> torch.Generator:
    """The explicit generator of one stage, derived from the root seed and its coordinates."""
    return make_generator(derive_seed(params["seed"], stage, dataset, model, seed), device)


def stage_seed(params: dict, stage: str, dataset: str, model: str = "", seed: int = 0) -> int:
    return derive_seed(params["seed"], stage, dataset, model, seed)
