"""Fixed cost of a stage process: the CPU a train or evaluate process spends outside its
computation (interpreter start-up, imports, params validation, data loading, checkpoints,
records, exit), measured as the process's whole CPU time (os.wait4's rusage, children
included) minus the CPU seconds of its computation proper that the stage records
(``cost.compute_cpu_seconds`` in train.json / eval.json, pipeline.common.process_cost).

Runs in a scratch copy of the pipeline on digits with the default settings of three models, ``--reps`` processes per
(stage, model), and prints the median.  GM_MEMORY_CHECKED=1 as the Snakefile sets it (the
runner checked every run's memory before scheduling); ``--unchecked`` measures a stage run on
its own (dvc repro, or by hand), which builds the model on torch's meta device first.
Target (issue 16): at most 2.0 s of CPU.

    python benchmarks/process_cost.py [--device cuda] [--reps 3] [--unchecked 1]
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import common  # noqa: F401
from common import parse, report, scratch_project

MODELS = ("rbm", "vae", "nade")


def stage_cpu(cmd: list[str], cwd: Path, env: dict) -> float:
    """CPU seconds (user + system) of one process and its children, from os.wait4."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr.read().decode()[-3000:]}")
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    args = parse(__doc__.splitlines()[0], unchecked=(int, 0, "1: without GM_MEMORY_CHECKED"))
    params = {"seed": 2016, "seeds": [0], "datasets": {"digits": {}},
              "evaluate": {"ais_chains": 20, "ais_betas": 200, "importance_samples": 200,
                           "n_samples": 200, "n_bootstrap": 20, "ais_convergence": []},
              "runs": [{"dataset": "digits", "model": m} for m in MODELS]}
    work = scratch_project(params, args.device)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GM_PROGRESS="0", GM_TORCH_THREADS=str(args.threads))
    for key in ("MLFLOW_TRACKING_URI", "GM_PARAMS"):
        env.pop(key, None)
    if not args.unchecked:
        env["GM_MEMORY_CHECKED"] = "1"
    # everything the stages read: prepared data, classifier, code fingerprints
    targets = [f"results/code/{m}.{s}.json" for m in MODELS for s in ("train", "evaluate")]
    made = subprocess.run(["snakemake", "--cores", "1", "--quiet", "all", "--",
                           "data/processed/digits.npz", "results/digits/classifier.pt", *targets],
                          cwd=work, env=env, capture_output=True, text=True)
    if made.returncode:
        sys.exit(f"snakemake failed in {work}:\n{made.stderr[-3000:]}")
    rows = []
    for model in MODELS:
        run_dir = work / "results" / "digits" / model / "seed0"
        fixed: dict[str, list[float]] = {"train": [], "evaluate": []}
        for _ in range(args.reps):
            for stage, record in (("train", "train.json"), ("evaluate", "eval.json")):
                if stage == "train":
                    shutil.rmtree(run_dir, ignore_errors=True)
                cpu = stage_cpu([sys.executable, "-m", f"pipeline.{stage}", "--dataset",
                                 "digits", "--model", model, "--seed", "0"], work, env)
                cost = json.loads((run_dir / record).read_text())["cost"]
                fixed[stage].append(cpu - cost["compute_cpu_seconds"])
        rows += [(f"{model} {stage}: fixed CPU s (median of {args.reps})",
                  statistics.median(v), "target <= 2.0") for stage, v in fixed.items()]
    report(f"fixed cost of a stage process, device {args.device}, "
           f"{'unchecked' if args.unchecked else 'GM_MEMORY_CHECKED=1'}", rows)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
