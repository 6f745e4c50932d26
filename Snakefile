# gm-bench: the experiment DAG.  Thin on purpose: every rule is one `python -m pipeline.<stage>`
# line, identical to the stage of the same name in dvc.yaml (tests/test_dag_parity.py checks it).
import os
from pipeline.params import canonical, evaluate_settings, runs, train_settings, validate

configfile: "params.yaml"
validate(config)  # one clear error naming the field, before anything runs
# every stage reads the parameters Snakemake merged: params.yaml, then each --configfile in order
os.environ["GM_PARAMS"] = os.pathsep.join(["params.yaml", *map(str, workflow.overwrite_configfiles)])

RUNS = runs(config)
DATASETS = sorted({d for d, _, _ in RUNS})
RUN_DIR = "results/{dataset}/{model}/seed{seed}"
GPUS = 1 if str(config.get("device", "auto")).startswith("cuda") else 0  # SLURM --gpus only for CUDA


onerror:  # with --keep-going: report what finished and mark what failed
    shell("python -m pipeline.report 2> logs/report-onerror.log || true")


# Rerun triggers: the values a stage reads, in a canonical (key-sorted) form, so reordering
# params.yaml reruns nothing; train never depends on evaluation settings.
def train_params(w):
    return canonical(train_settings(config, w.model))


def evaluate_params(w):
    return canonical(evaluate_settings(config, w.model))


EVALS = expand(RUN_DIR + "/eval.json", zip, dataset=[r[0] for r in RUNS],
               model=[r[1] for r in RUNS], seed=[r[2] for r in RUNS])


rule all:  # every run's results too: the committed report alone must not look up to date
    input:
        EVALS,
        "reports/report.md",
        "reports/report.html",
        "reports/results.csv",


rule fetch:
    output: directory("data/raw/{dataset}")
    params: options=lambda w: config["datasets"][w.dataset]
    log: "logs/fetch/{dataset}.log"
    shell: "python -m pipeline.fetch --dataset {wildcards.dataset} 2> {log}"


rule prepare:
    input: "data/raw/{dataset}", "pipeline/prepare.py"
    output: "data/processed/{dataset}.npz"
    params: options=lambda w: config["datasets"][w.dataset]
    log: "logs/prepare/{dataset}.log"
    shell: "python -m pipeline.prepare --dataset {wildcards.dataset} 2> {log}"


rule classifier:
    input: "data/processed/{dataset}.npz", "pipeline/classifier.py"
    output: "results/{dataset}/classifier.pt", "results/{dataset}/reference.json"
    params: seed=config["seed"]
    log: "logs/classifier/{dataset}.log"
    shell: "python -m pipeline.classifier --dataset {wildcards.dataset} 2> {log}"


rule train:
    input: "data/processed/{dataset}.npz", "pipeline/train.py"
    output: RUN_DIR + "/model.pt", RUN_DIR + "/train.json"
    params: hp=train_params, seed=config["seed"], device=config.get("device", "auto")
    resources: gpu=GPUS, runtime=120, mem_mb=4000
    log: "logs/train/{dataset}-{model}-seed{seed}.log"
    shell: "python -m pipeline.train --dataset {wildcards.dataset} --model {wildcards.model} --seed {wildcards.seed} 2> {log}"


rule evaluate:
    input: RUN_DIR + "/model.pt", RUN_DIR + "/train.json", "results/{dataset}/classifier.pt", "pipeline/evaluate.py"
    output: RUN_DIR + "/eval.json", RUN_DIR + "/samples.png"
    params: budget=evaluate_params
    resources: gpu=GPUS, runtime=60, mem_mb=4000
    log: "logs/evaluate/{dataset}-{model}-seed{seed}.log"
    shell: "python -m pipeline.evaluate --dataset {wildcards.dataset} --model {wildcards.model} --seed {wildcards.seed} 2> {log}"


rule report:
    input:
        EVALS,
        expand("results/{dataset}/reference.json", dataset=DATASETS),
        "pipeline/report.py",
        "configs/published.csv",
    output: "reports/report.md", "reports/report.html", "reports/results.csv", "reports/metrics.json", "reports/curves.csv"
    log: "logs/report.log"
    shell: "python -m pipeline.report 2> {log}"
