"""What every stage shares: its command line, output paths, device and seeds."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from gm.errors import GmError
from gm.seeding import derive_seed, make_generator
from pipeline import params as P

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


def run_stage(fn, argv, description: str, **flags) -> int:
    """Parse flags, load+validate params, run ``fn(args, params)``; errors -> one clear line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    args = parse(argv, description, **flags)
    # small models run fastest on one thread, and `--cores 8` runs many stages at once
    torch.set_num_threads(int(os.environ.get("GM_TORCH_THREADS", "1")))
    try:
        params = P.load(args.params)
        _check_target(args, params)
        fn(args, params)
    except GmError as err:
        where = "+".join(str(p) for p in args.params)
        print(f"error: {where}: {err}" if isinstance(err, ValueError) else f"error: {err}",
              file=sys.stderr)
        return 2
    return 0


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


def raw_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def processed_path(dataset: str) -> Path:
    return Path("data/processed") / f"{dataset}.npz"


def classifier_path(dataset: str) -> Path:
    return Path("results") / dataset / "classifier.pt"


def run_dir(dataset: str, model: str, seed: int) -> Path:
    return Path("results") / dataset / model / f"seed{seed}"


def device_of(params: dict) -> torch.device:
    """``device: auto`` picks CUDA when present, else the CPU."""
    d = params.get("device", "auto")
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
