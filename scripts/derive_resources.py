#!/usr/bin/env python
"""Derive the SLURM ``resources:`` block of a target config from a finished run's measured costs.

    python scripts/derive_resources.py --measured params.yaml configs/paper-cpu.yaml \\
        --results results --target params.yaml configs/paper.yaml [--write configs/paper.yaml]

``--measured``: the params files of the finished run (merged in order, as ``--configfile``);
``--results``: its results folder, read from ``<results>/<ds>/<model>/seed<s>/train.json`` and
``eval.json``, each with ``"cost": {"wall_seconds", "cpu_seconds", "peak_rss_mb"}``;
``--target``: the params files of the experiment to size.  Prints the ``resources:`` block (YAML);
``--write FILE`` replaces the ``resources:`` block of FILE (the rest of the file, comments
included, stays as it is; the new file is validated before it replaces the old) and keeps its
entries for models that were not measured.

A faithful measurement has the target's model settings.  ``--calibration FILE`` writes one
(:func:`calibration_params`): the target's model blocks with epochs / 100 on 2,000 Fashion-MNIST
images, per-example evaluation budgets as the target's.  Run it in a scratch copy of the
repository (its results/fashion_mnist/ would mix with configs/paper-cpu.yaml's), one job at a
time so that each cost is the stage's own:

    python scripts/derive_resources.py --target params.yaml configs/paper.yaml \\
        --calibration configs/calibrate.yaml
    snakemake --cores 1 --configfile configs/calibrate.yaml
    python scripts/derive_resources.py --measured params.yaml configs/calibrate.yaml \\
        --results results --target params.yaml configs/paper.yaml --write /repo/configs/paper.yaml

The formula (the same for every model; S = ``--safety``, default 2, covers run-to-run noise and
what the scaling below leaves out; G = ``--gpu-speedup``, default 1: a time measured on a CPU is
taken as an upper bound of the time on a GPU):

    train runtime    = wall_seconds / 60 x grown(R) x S / G,
                       R = (target epochs / measured epochs) x (target train size / measured size)
    evaluate runtime = wall_seconds / 60 x grown(R) x S / G,
                       R = max_i (target driver_i / measured driver_i)
    grown(R)         = (1 - c) + c x R,  c = compute_cpu_seconds / cpu_seconds: the start-up of
                       the process (imports, loading) does not grow (c = 1 without the split)
    mem_mb           = (peak_rss_mb + target data MB - measured data MB) x S

(``--clock cpu``: cpu_seconds instead of wall_seconds, for a single-threaded measurement on a
busy shared machine, whose wall time counts the waits for a core.)  runtime is rounded up to
whole minutes (at least 10), mem_mb up to a multiple of 500 (at least
2000), one entry per model; ``gpus`` (``--gpus``, default 1) goes into the block's defaults,
``resources.train`` and ``resources.evaluate``, whose other values the target keeps.

- measured epochs: the epochs that process trained (last epoch of ``history`` minus
  ``resumed_from_epoch``); train size: the prepared data of the measured run
  (``<results>/../data/processed/<ds>.npz``), else the dataset's known split sizes capped by
  ``max_train``; target train size: known split sizes capped by ``max_train``.
- evaluate: its cost is a sum of parts, each proportional to one "driver" (test examples;
  samples drawn; and per estimator, e.g. AIS chains x distributions, test examples x RAISE
  chains x distributions, test examples x importance samples, Parzen samples x validation or
  test examples).  Scaling the whole measured time by the LARGEST driver ratio bounds the sum
  from above.  The drivers follow the measured run's ``test_log_likelihood.method`` (an
  unknown method: all of them).  The bound is tight when the measurement keeps the per-example
  budgets of the target (importance samples, RAISE chains, distributions, Parzen samples) and
  cuts test examples, samples and AIS chains by one factor; it is loose where a part with a
  small ratio dominates the measured time (e.g. Parzen samples drawn by a long chain).
- memory: the data (both views, float32) is the part of the peak that grows with the data size;
  the rest (interpreter, torch, model, a batch) is taken as it was measured.
- Several seeds of one model: the largest derived value.  A stage of a target model without a
  measurement of its own uses one of the same registered model (a variant's base, or a sibling
  variant), e.g. a variant measured for train only is sized for evaluate by its base.
- ``--keep NAME`` / ``--keep NAME.STAGE``: entries set by hand that a new derivation leaves.
- The formula scales epochs and data size only: a measurement of other model settings (widths,
  CD steps, batch size) is reported as a note on stderr, since the per-epoch cost differs.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import params as P  # noqa: E402

SAFETY = 2.0
GPU_SPEEDUP = 1.0
MIN_RUNTIME, MIN_MEM, MEM_STEP = 10, 2000, 500
STAGES = ("train", "evaluate")
TARGET_DATA = Path("data/processed")    # a small target dataset's prepared file, if not in KNOWN_SPLITS

# Split sizes (train, val, test) and data dimension of datasets whose full files are large; a
# prepared file (.npz) is read instead where there is one.  MNIST and Fashion-MNIST: 60k official
# training images minus the carved validation set (val_size, default 10k), 10k test;
# binarized MNIST (Larochelle & Murray 2011): fixed 50k / 10k / 10k.
KNOWN_SPLITS = {"mnist": ("carved", 60000, 10000, 784),
                "fashion_mnist": ("carved", 60000, 10000, 784),
                "binarized_mnist": ("fixed", (50000, 10000, 10000), None, 784)}


def round_runtime(minutes: float) -> int:
    return max(MIN_RUNTIME, math.ceil(minutes - 1e-9))


def round_mem(mb: float) -> int:
    return max(MIN_MEM, MEM_STEP * math.ceil(mb / MEM_STEP - 1e-9))


def npz_sizes(path: Path) -> tuple[dict[str, int], float] | None:
    """({split: examples}, MB of the x_/r_ arrays) of a prepared dataset, from array headers."""
    try:
        sizes, nbytes = {}, 0
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                key = name.removesuffix(".npy")
                if not re.fullmatch(r"[xr]_(train|val|test)", key):
                    continue
                with zf.open(name) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if major == 1
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                nbytes += int(np.prod(shape)) * np.dtype(dtype).itemsize
                sizes[key[2:]] = int(shape[0])
        return sizes, nbytes / 2 ** 20
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def data_sizes(ds: str, options: dict | None, npz: Path | None = None) -> tuple[dict, float]:
    """({train, val, test: examples}, data MB) of dataset ``ds`` prepared with ``options``."""
    options = options or {}
    if npz is not None and (found := npz_sizes(npz)) is not None:
        return found
    if ds not in KNOWN_SPLITS:
        raise SystemExit(f"error: {ds}: split sizes unknown (prepare it, so that "
                         f"data/processed/{ds}.npz exists, or add it to KNOWN_SPLITS)")
    layout, full, test, dim = KNOWN_SPLITS[ds]
    if layout == "carved":
        val = options.get("val_size", 10000)
        n = {"train": full - val, "val": val, "test": test}
    else:
        n = dict(zip(("train", "val", "test"), full))
    n = {s: min(v, options.get(f"max_{s}") or v) for s, v in n.items()}
    return n, sum(n.values()) * dim * 4 * 2 / 2 ** 20     # x_ and r_ views, float32


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def measured_epochs(train: dict) -> int:
    history = [h.get("epoch", 0) for h in train.get("history") or [] if isinstance(h, dict)]
    last = max(history) if history else int(train["epochs"])
    return max(1, last - int(train.get("resumed_from_epoch") or 0))


def drivers(method: str, budget: dict, n_test: int, n_val: int) -> dict[str, float]:
    """Each part of an evaluation's cost, as the budget quantity it is proportional to."""
    b = budget
    per_example = min(n_test, b.get("test_subset") or n_test)   # what RAISE, IS, decoder AIS see
    out = {"test examples": n_test, "samples": b.get("n_samples", 1)}
    ais = {"AIS chains x distributions": b["ais_chains"] * b["ais_betas"],
           "AIS convergence chains x distributions":
               b["ais_chains"] * max(b.get("ais_convergence") or [1]),
           "test x RAISE chains x distributions": per_example * b["raise_chains"] * b["ais_betas"]}
    iw = {"test x importance samples": per_example * b["importance_samples"]}
    parzen = {"Parzen samples": b["parzen_samples"],
              "validation x Parzen samples": n_val * b["parzen_samples"],
              "test x Parzen samples": n_test * b["parzen_samples"]}
    dec = {"test x decoder AIS chains x distributions x leapfrog":
           per_example * b["decoder_ais_chains"] * b["decoder_ais_betas"]
           * b["decoder_ais_leapfrog"]}
    tokens = set(re.split(r"[^a-z]+", method.lower()))
    known = False
    if tokens & {"ais", "raise", "logz"} and "decoder" not in tokens:
        out |= ais; known = True
    if tokens & {"iwae", "elbo", "iw", "bound"}:
        out |= iw; known = True
    if "parzen" in tokens:
        out |= parzen; known = True
    if "decoder" in tokens:
        out |= dec; known = True
    if "exact" in tokens:
        known = True
    if not known:                                    # unknown estimator: every driver
        out |= ais | iw | parzen | dec
    return out


def scaled_share(cost: dict, factor: float) -> float:
    """The factor a stage's measured time grows by: ``factor`` on its computation, 1 on its
    fixed start-up (imports, loading), the shares taken from ``compute_cpu_seconds`` /
    ``cpu_seconds`` (all computation when the record does not split them)."""
    cpu, compute = cost.get("cpu_seconds"), cost.get("compute_cpu_seconds")
    share = compute / cpu if cpu and compute is not None and 0 <= compute <= cpu else 1.0
    return (1 - share) + share * factor


def _ratio(target: float, measured: float) -> float:
    return target / measured if measured > 0 else (1.0 if target == 0 else math.inf)


def differing(measured: dict, target: dict, prefix="") -> list[str]:
    """Leaves of two train-settings dicts that differ, but for what the formula scales: epochs
    and epoch schedules (fields named ``*epochs``), and checkpoint_every."""
    out = []
    for k in sorted(set(measured) | set(target)):
        if k.endswith("epochs") or k == "checkpoint_every":
            continue
        a, b = measured.get(k), target.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing(a, b, f"{prefix}{k}.")
        elif a != b:
            shown = ["(unset)" if v is None else repr(v) for v in (a, b)]
            out.append(f"{prefix}{k}: {shown[0]} -> {shown[1]}")
    return out


def _first_dataset(params: dict, name: str) -> str:
    """The first dataset run ``name`` trains on (its tuned values are per dataset)."""
    return next(ds for ds, n, _ in P.runs(params) if n == name)


def _measurements(measured_params: dict, results: Path, notes: list[str]) -> dict:
    """{stage: {run name: [(dataset, record)]}}: the train.json / eval.json records of the
    finished run that hold a ``cost``."""
    found: dict[str, dict[str, list]] = {stage: {} for stage in STAGES}
    for ds, name, seed in P.runs(measured_params):
        folder = results / ds / name / f"seed{seed}"
        for stage, file in (("train", "train.json"), ("evaluate", "eval.json")):
            record = _read(folder / file)
            if record is None:
                continue
            if not isinstance(record.get("cost"), dict):
                notes.append(f"{name}: {folder / file} records no cost")
                continue
            found[stage].setdefault(name, []).append((ds, record))
    return found


def derive(measured_params: dict, results: Path, target: dict, *, safety: float = SAFETY,
           gpu_speedup: float = GPU_SPEEDUP, clock: str = "wall",
           notes: list[str] | None = None) -> dict[str, dict]:
    """{run name: {"train": {"runtime", "mem_mb"}, "evaluate": {...}}} for every target run
    name, each stage from a measurement of that name, else of a name with the same registered
    model (a variant's base or a sibling variant); a stage without any is left out."""
    notes = notes if notes is not None else []
    data_dir = results.parent / "data" / "processed"
    found = _measurements(measured_params, results, notes)
    out: dict[str, dict] = {}
    for name in sorted({name for _, name, _ in P.runs(target)}):
        registered = P.registered_model(target, name)
        t_train = P.train_settings(target, name, _first_dataset(target, name))
        t_budget = dataclasses.asdict(P.evaluate_config(target, name))
        for stage in STAGES:
            source = name if name in found[stage] else next(
                (m for m in sorted(found[stage])
                 if P.registered_model(measured_params, m) == registered), None)
            if source is None:
                also = f" or of {registered}" if registered != name else ""
                notes.append(f"{name}: no {stage} measurement of {name}{also}: left as it is")
                continue
            if stage == "train" and (diff := differing(P.train_settings(
                measured_params, source, _first_dataset(measured_params, source)),
                                                       t_train)):
                notes.append(f"{name}: measured {source} with other settings "
                             f"({'; '.join(diff)}): the formula scales epochs and data size only")
            m_budget = dataclasses.asdict(P.evaluate_config(measured_params, source))
            best = {"runtime": 0, "mem_mb": 0}
            for t_ds in dict.fromkeys(d for d, n, _ in P.runs(target) if n == name):
                t_sizes, t_mb = data_sizes(t_ds, target["datasets"].get(t_ds), None
                                           if t_ds in KNOWN_SPLITS else TARGET_DATA / f"{t_ds}.npz")
                for ds, record in found[stage][source]:
                    m_sizes, m_mb = data_sizes(ds, measured_params["datasets"].get(ds),
                                               data_dir / f"{ds}.npz")
                    if stage == "train":
                        factor = (_ratio(t_train["train"]["epochs"], measured_epochs(record))
                                  * _ratio(t_sizes["train"], m_sizes["train"]))
                    else:
                        ll = record.get("test_log_likelihood") or {}
                        method = ll.get("method", "")
                        m_drv = drivers(method, m_budget | (record.get("budget") or {}),
                                        ll.get("n") or m_sizes["test"], m_sizes["val"])
                        t_drv = drivers(method, t_budget, t_sizes["test"], t_sizes["val"])
                        ratios = {k: _ratio(t_drv[k], m_drv[k]) for k in t_drv}
                        for k in [k for k, r in ratios.items() if math.isinf(r)]:
                            notes.append(f"{name}: measured with {k} = 0: that part of "
                                         "evaluate's cost is not in the measurement")
                            del ratios[k]
                        factor = max(ratios.values())
                    cost = record["cost"]
                    minutes = (cost[f"{clock}_seconds"] / 60 * scaled_share(cost, factor)
                               * safety / gpu_speedup)
                    mem = (cost["peak_rss_mb"] + max(0.0, t_mb - m_mb)) * safety
                    best["runtime"] = max(best["runtime"], round_runtime(minutes))
                    best["mem_mb"] = max(best["mem_mb"], round_mem(mem))
            out.setdefault(name, {})[stage] = best
    return out


def block_yaml(derived: dict, old: dict, defaults: dict, header: list[str]) -> str:
    """The ``resources:`` block: ``defaults`` per stage, then each model's entries: ``derived``
    over the ``old`` ones (an old entry that was not derived is kept, marked so)."""
    def flow(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {d[k]}" for k in ("runtime", "mem_mb", "gpus") if k in d) + "}"
    lines = [*(f"# {h}" for h in header), "resources:",
             *(f"  {stage}: {flow(defaults[stage])}" for stage in STAGES),
             "  models:"]
    for name in sorted(derived | old):
        lines.append(f"    {name}:")
        for stage in STAGES:
            if stage in derived.get(name, {}):
                lines.append(f"      {stage}: {flow(derived[name][stage])}")
            elif stage in (old.get(name) or {}):
                lines.append(f"      {stage}: {flow(old[name][stage])}   # kept as it was")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` (a YAML file) with its top-level ``resources:`` key, and the comment lines just
    above it, replaced by ``block``; appended when it has none."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if re.match(r"resources\s*:", l)), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + block
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i][0].isspace() and not lines[i].startswith("#")),
               len(lines))
    while end > start + 1 and lines[end - 1].startswith("#"):   # comments of the next key
        end -= 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    return "".join(lines[:start]) + block + ("\n" if end < len(lines) else "") + "".join(lines[end:])


def calibration_params(target: dict, *, dataset: str = "fashion_mnist", n_train: int = 2000,
                       n_val: int = 500, n_test: int = 100, divisor: int = 100) -> dict:
    """A params file that measures ``target``'s models cheaply and faithfully: every run name
    with its model block as it is but for the epochs (divided by ``divisor``, at least 2; model
    fields named ``*epochs``, epoch schedules such as DBN's ``layer_epochs``, alike), on
    ``n_train``/``n_val``/``n_test`` examples of ``dataset`` (MNIST-shaped: 784 pixels), with
    the target's per-example evaluation budgets and, cut by the test-size factor, its samples
    and AIS chains: every evaluate driver ratio is then about that factor, which keeps the
    evaluate bound tight.  Run it one job at a time (``snakemake --cores 1``)."""
    names = list(dict.fromkeys(name for _, name, _ in P.runs(target)))
    models = {}
    for name in names:
        block = json.loads(json.dumps(target["models"][name]))
        train, model = block["train"], block.get("model") or {}
        train["epochs"] = max(2, round(train["epochs"] / divisor))
        train["checkpoint_every"] = 0
        for key, value in model.items():
            if key.endswith("epochs") and isinstance(value, list):
                model[key] = [max(1, round(v / divisor)) for v in value]
                train["epochs"] = max(train["epochs"], sum(model[key]))
            elif key.endswith("epochs") and isinstance(value, int) and value > 0:
                model[key] = max(1, round(value / divisor))
        models[name] = block
    t_test = max(data_sizes(ds, target["datasets"].get(ds))[0]["test"]
                 for ds, _, _ in P.runs(target))
    factor = max(1, t_test // n_test)
    budget = dict(target.get("evaluate") or {})
    budget["ais_chains"] = max(2, round(P.evaluate_config(target).ais_chains / factor))
    budget["n_samples"] = max(100, round(P.evaluate_config(target).n_samples / factor))
    return {"seed": target["seed"], "seeds": [target["seeds"][0]], "device": "cpu",
            "datasets": {dataset: {"max_train": n_train, "max_val": n_val, "max_test": n_test}},
            "evaluate": budget, "runs": [{"dataset": dataset, "model": n} for n in names],
            "models": models}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", nargs="+", help="params files of the finished run")
    ap.add_argument("--results", default="results", help="its results folder")
    ap.add_argument("--target", nargs="+", required=True, help="params files of the experiment to size")
    ap.add_argument("--write", help="a YAML file whose resources: block to replace (e.g. configs/paper.yaml)")
    ap.add_argument("--safety", type=float, default=SAFETY)
    ap.add_argument("--gpu-speedup", type=float, default=GPU_SPEEDUP)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs of every train/evaluate job (0: CPU jobs)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="the measured time: wall_seconds, or cpu_seconds for a single-threaded "
                         "measurement on a busy shared machine (its wall time counts the waits)")
    ap.add_argument("--keep", nargs="+", default=[], metavar="NAME",
                    help="run names (NAME, or NAME.train / NAME.evaluate for one stage) whose "
                         "entries in the target stay as they are (set by hand)")
    ap.add_argument("--calibration", metavar="FILE",
                    help="write a params file that measures the target's models cheaply "
                         "(see calibration_params), then stop")
    args = ap.parse_args(argv)
    if args.calibration:
        calib = calibration_params(P.load(args.target))
        P.validate(json.loads(json.dumps(calib)))
        Path(args.calibration).write_text(
            f"# calibration run for {' + '.join(args.target)}, written by "
            "scripts/derive_resources.py --calibration\n" + yaml.safe_dump(calib, sort_keys=False))
        return 0
    if not args.measured:
        ap.error("--measured is required (or --calibration FILE)")
    try:
        measured, target = P.load(args.measured), P.load(args.target)
    except P.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    notes: list[str] = []
    derived = derive(measured, Path(args.results), target, safety=args.safety,
                     gpu_speedup=args.gpu_speedup, clock=args.clock, notes=notes)
    for item in args.keep:                    # NAME or NAME.STAGE: left as the target has it
        name, _, stage = item.partition(".")
        for st in ([stage] if stage else STAGES):
            derived.get(name, {}).pop(st, None)
        if not derived.get(name, True):
            del derived[name]
    old = target.get("resources") or {}
    defaults = {stage: (old.get(stage) or {}) | {"gpus": args.gpus} for stage in STAGES}
    command = " ".join(["python scripts/derive_resources.py", "--measured", *args.measured,
                        "--results", args.results, "--target", *args.target]
                       + (["--write", args.write] if args.write else [])
                       + (["--keep", *args.keep] if args.keep else [])
                       + [f"--{k.replace('_', '-')} {v}" for k, v in
                          (("safety", args.safety), ("gpu_speedup", args.gpu_speedup),
                           ("clock", args.clock), ("gpus", args.gpus))
                          if v != {"safety": SAFETY, "gpu_speedup": GPU_SPEEDUP, "clock": "wall",
                                   "gpus": 1}[k]])
    text = (f"SLURM requests per model, derived by scripts/derive_resources.py on "
            f"{datetime.date.today()} from the costs in {args.results} (params "
            f"{' + '.join(args.measured)}): runtime = measured {args.clock} minutes x epochs "
            f"ratio x train-size ratio (evaluate: x its largest budget ratio) x {args.safety:g} "
            f"(safety) / {args.gpu_speedup:g} (GPU speed-up), rounded up (>= {MIN_RUNTIME}); "
            f"mem_mb = (peak RSS + data growth) x {args.safety:g}, rounded up to {MEM_STEP} MB "
            f"(>= {MIN_MEM}).  Regenerate with:")
    header = textwrap.wrap(text, 94) + [f"  {shlex.join(shlex.split(command))}"]
    block = block_yaml(derived, old.get("models") or {}, defaults, header)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not args.write:
        sys.stdout.write(block)
        return 0
    path = Path(args.write)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(replace_block(path.read_text(), block))
    try:                                  # the new file must validate before it replaces the old
        P.load([tmp if Path(t).resolve() == path.resolve() else t for t in args.target])
    except P.ConfigError as err:
        tmp.unlink()
        print(f"error: {path} not written: {err}", file=sys.stderr)
        return 2
    os.replace(tmp, path)
    print(f"wrote the resources: block of {path} ({len(derived)} models derived)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
