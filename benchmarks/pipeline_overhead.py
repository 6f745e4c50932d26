"""Pipeline overhead: wall time of a whole `snakemake` run against the sum of its stages'
compute time (train_seconds of train.json + eval_seconds of eval.json), in a scratch copy.

Runs serially (--cores 1) so wall time and summed compute are comparable; everything that is
not model training or evaluation counts as overhead: interpreter and import start-up of each
stage process, params validation, data/classifier/report stages, checkpoints, MLflow, Snakemake
scheduling.  Also prints the start-up of one stage process (the per-job floor).
ratio = wall / compute - 1.  Target (issue 16): <= 1.0.

The overhead is split approximately: the train/evaluate processes' own time outside their
compute (from their records), a second snakemake call with nothing left to do (start, parse,
DAG, exit, as in the first call but with the memory estimates cached), and the rest.

    python benchmarks/pipeline_overhead.py [--device cuda] [--params FILE] [--keep DIR]
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401
from common import parse, report, scratch_project

import yaml

TINY = {   # digits, the default hyperparameters of four quick models, one seed
    "seed": 2016, "seeds": [0], "datasets": {"digits": {}},
    "evaluate": {"ais_chains": 20, "ais_betas": 200, "importance_samples": 200,
                 "parzen_samples": 1000, "n_samples": 200, "n_bootstrap": 20},
    "runs": [{"dataset": "digits", "model": m} for m in ("rbm", "fvsbn", "nade", "vae")],
}


def main() -> None:
    args = parse(__doc__.splitlines()[0], params=(str, "", "params file (default: a tiny one)"),
                 keep=(str, "", "run in this directory and keep it"))
    params = yaml.safe_load(Path(args.params).read_text()) if args.params else TINY
    work = scratch_project(params, args.device, args.keep)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GM_PROGRESS="0", GM_TORCH_THREADS=str(args.threads))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("GM_PARAMS", None)

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipeline.train, pipeline.evaluate"],
                   cwd=work, env=env, check=True)
    startup = time.perf_counter() - t0

    t0 = time.perf_counter()
    r = subprocess.run(["snakemake", "--cores", "1", "--quiet"], cwd=work, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"snakemake failed in {work}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    # (record, its compute key) of every train and evaluate process
    records = [(json.loads(p.read_text()), key)
               for name, key in (("train", "train_seconds"), ("eval", "eval_seconds"))
               for p in work.glob(f"results/*/*/seed*/{name}.json")]
    train = sum(r[k] for r, k in records if k == "train_seconds")
    evals = sum(r[k] for r, k in records if k == "eval_seconds")
    # wall seconds of each process from its start to its record, less its compute
    in_stage = sum(r["cost"]["wall_seconds"] - r[k] for r, k in records)
    n_runs = len(records) // 2
    n_jobs = 3 * len(params["datasets"]) + 2 * n_runs + 1
    compute = train + evals

    t0 = time.perf_counter()   # nothing left to do: parse, DAG, exit
    subprocess.run(["snakemake", "--cores", "1", "--quiet"], cwd=work, env=env,
                   capture_output=True, check=True)
    noop = time.perf_counter() - t0
    report(f"pipeline overhead ({n_runs} runs, {n_jobs} jobs, --cores 1, in {work})", [
        ("wall time of snakemake (s)", wall, ""),
        ("sum of train_seconds (s)", train, ""),
        ("sum of eval_seconds (s)", evals, ""),
        ("start-up of one stage process (s)", startup, "python + import torch, gm, pipeline"),
        ("overhead per job (s)", (wall - compute) / n_jobs, ""),
        ("  in train/evaluate processes (s)", in_stage,
         f"{2 * n_runs} processes, start to record, less compute"),
        ("  snakemake with nothing to do (s)", noop, "start, parse, DAG, exit"),
        ("  the rest (s)", wall - compute - in_stage - noop,
         "exits, code/fetch/prepare/classifier/report jobs, scheduling"),
        ("overhead ratio wall / compute - 1", wall / compute - 1, "target <= 1.0")])
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
