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

Two runs side by side, each in its own scratch copy: warm starts (the default: stage processes
forked from a server that has imported torch, pipeline/warm.py) and cold (GM_WARM=0: every
stage process imports torch itself).

    python benchmarks/pipeline_overhead.py [--device cuda] [--params FILE] [--keep DIR]
    (--keep DIR: the runs stay in DIR-warm and DIR-cold)
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
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GM_PROGRESS="0", GM_TORCH_THREADS=str(args.threads))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("GM_PARAMS", None)

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipeline.train, pipeline.evaluate"],
                   cwd=Path(__file__).resolve().parents[1], env=env, check=True)
    startup = time.perf_counter() - t0
    rows = [("start-up of one cold stage process (s)", startup,
             "python + import torch, gm, pipeline")]
    for name, warm in (("warm", "1"), ("cold", "0")):
        work = scratch_project(params, args.device, args.keep and f"{args.keep}-{name}")
        m = measure(work, env | {"GM_WARM": warm})
        n_runs = m["records"] // 2
        n_jobs = 3 * len(params["datasets"]) + 2 * n_runs + 1
        compute = m["train"] + m["evals"]
        rows += [(f"{name}: wall time of snakemake (s)", m["wall"], ""),
                 (f"{name}: sum of train_seconds (s)", m["train"], ""),
                 (f"{name}: sum of eval_seconds (s)", m["evals"], ""),
                 (f"{name}: overhead per job (s)", (m["wall"] - compute) / n_jobs,
                  f"{n_jobs} fetch/prepare/classifier/train/evaluate/report jobs"),
                 (f"{name}:   in train/evaluate processes (s)", m["in_stage"],
                  f"{2 * n_runs} processes, start to record, less compute"),
                 (f"{name}:   snakemake with nothing to do (s)", m["noop"],
                  "start, parse, DAG, exit"),
                 (f"{name}:   the rest (s)", m["wall"] - compute - m["in_stage"] - m["noop"],
                  "exits, code/fetch/prepare/classifier/report jobs, scheduling"),
                 (f"{name}: overhead ratio wall / compute - 1", m["wall"] / compute - 1,
                  "target <= 1.0")]
        if not args.keep:
            shutil.rmtree(work)
    report(f"pipeline overhead ({len(params['runs'])} runs, --cores 1, warm and cold)", rows)


def measure(work: Path, env: dict) -> dict:
    """Run the pipeline in ``work``, then again with nothing to do; its times in seconds.
    An untimed dry run first, so that both the warm and the cold run find the memory
    estimates of these settings and code cached (pipeline/memory.py), whichever runs first."""
    subprocess.run(["snakemake", "--cores", "1", "--quiet", "-n"], cwd=work, env=env,
                   capture_output=True, check=True)
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
    t0 = time.perf_counter()   # nothing left to do: parse, DAG, exit
    subprocess.run(["snakemake", "--cores", "1", "--quiet"], cwd=work, env=env,
                   capture_output=True, check=True)
    return {"wall": wall, "noop": time.perf_counter() - t0, "records": len(records),
            "train": sum(r[k] for r, k in records if k == "train_seconds"),
            "evals": sum(r[k] for r, k in records if k == "eval_seconds"),
            # wall seconds of each process from its start to its record, less its compute
            "in_stage": sum(r["cost"]["wall_seconds"] - r[k] for r, k in records)}


if __name__ == "__main__":
    main()
