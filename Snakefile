# gm-bench: the experiment DAG.  Thin on purpose: every rule is one `python -m pipeline.<stage>`
# line, identical to the stage of the same name in dvc.yaml (tests/test_dag_parity.py checks it).
import gc
import os
import sys
import threading
from pathlib import Path
from pipeline import code, provenance, scheduler_timers, search, warm
from pipeline.preflight import check_config
from pipeline.params import (canonical, error_line, evaluate_settings,
                             registered_model, report_dir, runs, stage_resources, train_settings,
                             tuned_dir)

configfile: "params.yaml"
check_config(config, ["params.yaml", *workflow.overwrite_configfiles],
             memory=workflow.is_main_process)  # one line naming file and field, before anything runs
# every stage reads the parameters Snakemake merged: params.yaml, then each --configfile in order
os.environ["GM_PARAMS"] = os.pathsep.join(["params.yaml", *map(str, workflow.overwrite_configfiles)])
os.environ["GM_MEMORY_CHECKED"] = "1"  # check_config estimated every run's memory: stages skip it
gc.freeze()   # torch and the imports live as long as Snakemake: no collection need traverse them
scheduler_timers.coalesce()   # one pending scheduler timer, not one more per finished job

RUNS = runs(config)
DATASETS = sorted({d for d, _, _ in RUNS})
RUN_DIR = "results/{dataset}/{model}/seed{seed}"
REPORT = str(report_dir(config))   # reports/, or a profile's own folder inside it
# results that another runner made with other settings (e.g. `dvc repro` with a value since
# reverted) record another fingerprint: change their stage's code input, so it reruns (only in
# the main process: a job on a cluster node parses this file again; a dry run only says so)
DRY_RUN = any(a in ("--dry-run", "--dryrun", "--just-print") or (a[:1] == "-" and a[1:2] != "-" and "n" in a)
              for a in sys.argv[1:])   # (workflow.dryrun is not yet set while this file is read)
if workflow.is_main_process:
    for stage, name in provenance.stale_stages(config, lambda d, m, s: RUN_DIR.format(dataset=d, model=m, seed=s)):
        if DRY_RUN:
            print(f"{name}: {stage} results were made with other settings; a run reruns them")
        else:
            provenance.request_rerun(Path(f"results/code/{name}.{stage}.json"),
                                     f"{stage} results were made with other settings")


onstart:  # local jobs fork from a server that has imported torch and the stages (pipeline/warm.py)
    if workflow.local_exec and os.environ.get("GM_WARM") != "0":
        os.environ["GM_WARM"] = warm.start()


def quick_exit():
    """The run is over: exit at once.  Cancel Snakemake's pending rescheduling timer (its job
    rate limiter's threading.Timer of up to 1 s: a daemon under pipeline/scheduler_timers.py,
    and a non-daemon that the exiting interpreter waits for where that patch could not apply)
    and keep the ~200,000 objects of torch and Snakemake out of exit's garbage collections
    (gc.freeze; pipeline/common.py process_main)."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
    gc.freeze()


onsuccess:  # one state for both runners: record in dvc.lock what this run of params.yaml made
    if os.path.isdir(".dvc") and not workflow.overwrite_configfiles:
        shell("dvc commit --force --quiet dvc.yaml > logs/dvc-commit.log 2>&1 "
              "|| echo 'dvc.lock not updated: see logs/dvc-commit.log' >&2")
    quick_exit()


onerror:  # with --keep-going: report what finished and mark what failed
    shell("python -m pipeline.report 2> logs/report-onerror.log || true")
    quick_exit()


# Rerun triggers: the values a stage reads, in a canonical (key-sorted) form, so reordering
# params.yaml reruns nothing; train never depends on evaluation settings.
def train_params(w):
    return canonical(train_settings(config, w.model, w.dataset))   # with the run's tuned values


def evaluate_params(w):
    return canonical(evaluate_settings(config, w.model))


def slurm(stage, field):
    """A job's SLURM request (runtime minutes, mem_mb, gpus) from params resources:, per model
    (pipeline/params.py stage_resources); a scheduling hint, so no rerun trigger holds it."""
    return lambda w: stage_resources(config, w.model, stage)[field]


def code_files(w):
    """The source files the stage runs for this model (pipeline/code.py): code is an input."""
    return code.stage_files(w.stage, registered_model(config, w.model))


EVALS = expand(RUN_DIR + "/eval.json", zip, dataset=[r[0] for r in RUNS],
               model=[r[1] for r in RUNS], seed=[r[2] for r in RUNS])


rule all:  # every run's results too: the committed report alone must not look up to date
    input:
        EVALS,
        REPORT + "/report.md",
        REPORT + "/report.html",
        REPORT + "/results.csv",


rule code:  # a fingerprint of the source files of a (stage, model), rewritten when one changes
    input: code_files
    output: "results/code/{model}.{stage}.json"
    wildcard_constraints: stage="train|evaluate"
    log: "logs/code/{model}.{stage}.log"
    shell: "python -m pipeline.code --stage {wildcards.stage} --model {wildcards.model} 2> {log}"


rule code_report:
    input: lambda w: code.stage_files("report")
    output: "results/code/report.json"
    log: "logs/code/report.log"
    shell: "python -m pipeline.code --stage report 2> {log}"


rule code_prepare:
    input: lambda w: code.stage_files("prepare", dataset=w.dataset)
    output: "results/code/{dataset}.prepare.json"
    log: "logs/code/{dataset}.prepare.log"
    shell: "python -m pipeline.code --stage prepare --dataset {wildcards.dataset} 2> {log}"


rule code_classifier:
    input: lambda w: code.stage_files("classifier")
    output: "results/code/classifier.json"
    log: "logs/code/classifier.log"
    shell: "python -m pipeline.code --stage classifier 2> {log}"


rule fetch:
    output: directory("data/raw/{dataset}")
    params: options=lambda w: config["datasets"][w.dataset]
    log: "logs/fetch/{dataset}.log"
    shell: "python -m pipeline.fetch --dataset {wildcards.dataset} 2> {log}"


rule prepare:
    input: "data/raw/{dataset}", "results/code/{dataset}.prepare.json"
    output: "data/processed/{dataset}.npz"
    params: options=lambda w: config["datasets"][w.dataset]
    log: "logs/prepare/{dataset}.log"
    shell: "python -m pipeline.prepare --dataset {wildcards.dataset} 2> {log}"


rule classifier:
    input: "data/processed/{dataset}.npz", "results/code/classifier.json"
    output: "results/{dataset}/classifier.pt", "results/{dataset}/reference.json"
    params: seed=config["seed"], reference={k: config["evaluate"].get(k) for k in ("n_bootstrap", "metric_images")}
    log: "logs/classifier/{dataset}.log"
    shell: "python -m pipeline.classifier --dataset {wildcards.dataset} 2> {log}"


rule train:
    input: "data/processed/{dataset}.npz", "results/code/{model}.train.json"
    output: RUN_DIR + "/model.pt", RUN_DIR + "/train.json"
    params: hp=train_params, seed=config["seed"], device=config.get("device", "auto")
    resources: gpu=slurm("train", "gpus"), runtime=slurm("train", "runtime"), mem_mb=slurm("train", "mem_mb")
    log: "logs/train/{dataset}-{model}-seed{seed}.log"
    shell: "python -m pipeline.train --dataset {wildcards.dataset} --model {wildcards.model} --seed {wildcards.seed} 2> {log}"


rule evaluate:
    input: RUN_DIR + "/model.pt", RUN_DIR + "/train.json", "results/{dataset}/classifier.pt", "results/code/{model}.evaluate.json"
    output: RUN_DIR + "/eval.json", RUN_DIR + "/samples.png", RUN_DIR + "/per_example.npz"
    params: budget=evaluate_params
    resources: gpu=slurm("evaluate", "gpus"), runtime=slurm("evaluate", "runtime"), mem_mb=slurm("evaluate", "mem_mb")
    log: "logs/evaluate/{dataset}-{model}-seed{seed}.log"
    shell: "python -m pipeline.evaluate --dataset {wildcards.dataset} --model {wildcards.model} --seed {wildcards.seed} 2> {log}"


rule report:
    input:
        EVALS,
        expand("results/{dataset}/reference.json", dataset=DATASETS),
        "results/code/report.json",
        "configs/published.csv",
    output: expand(REPORT + "/{f}", f=["report.md", "report.html", "results.csv", "metrics.json", "curves.csv", "pairs.csv", "progress.csv"])
    log: "logs/report.log"
    shell: "python -m pipeline.report 2> {log}"


# --- tuning (issue 15): `snakemake --cores 8 tune`, never part of `all` -------------------------
# One Optuna study per run of configs/search.yaml runs: (that params also runs); its workers
# share one storage; the result step writes the tuned file that params tuned: merges.
SEARCH = str(search.search_path())
PLAN = {"runs": [], "workers": []}
if os.path.exists(SEARCH) and tuned_dir(config) is not None:
    try:
        PLAN = search.load(config)
    except search.ConfigError as err:   # only the tune target needs it: say so, go on
        print(error_line(err, [SEARCH]) + " (the tune target is unavailable)", file=sys.stderr)
TUNE = search.tune_runs(config, PLAN) if PLAN["runs"] else []
STUDY = "configs/studies/{dataset}/{model}"   # its committed records (the declared outputs)


def study_params(w):
    return canonical(search.study_settings(config, PLAN, w.dataset, w.model))


rule tune:  # the result step also writes <tuned>/<dataset>/<model>.yaml, read as params
    input: [f"configs/studies/{d}/{m}/study.json" for d, m in TUNE]


rule tune_worker:
    input:
        "data/processed/{dataset}.npz",
        "results/{dataset}/classifier.pt",
        SEARCH,
        lambda w: code.stage_files("tune", registered_model(config, w.model)),
    output: STUDY + "/workers/worker{worker}.json"
    wildcard_constraints: worker=r"\d+"
    params: study=study_params
    resources: gpu=slurm("train", "gpus"), runtime=slurm("train", "runtime"), mem_mb=slurm("train", "mem_mb")
    log: "logs/tune/{dataset}-{model}-worker{worker}.log"
    shell: "python -m pipeline.tune --dataset {wildcards.dataset} --model {wildcards.model} --worker {wildcards.worker} 2> {log}"


rule tune_study:
    input: lambda w: expand(STUDY + "/workers/worker{worker}.json", dataset=w.dataset, model=w.model, worker=PLAN["workers"])
    output: STUDY + "/study.json"
    params: study=study_params
    log: "logs/tune/{dataset}-{model}.log"
    shell: "python -m pipeline.tune --dataset {wildcards.dataset} --model {wildcards.model} 2> {log}"
