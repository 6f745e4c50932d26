"""The pipeline on a real single-node SLURM cluster through snakemake-executor-plugin-slurm.

Start the cluster first (as root): ``scripts/slurm-up.sh`` (CI does); the test is skipped with
that instruction otherwise. The node has a fake GPU (gres gpu:fakegpu:1): with ``device: cuda``
the train and evaluate jobs must be submitted with ``--gpus=1`` and fall back to the CPU there.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cluster_fixtures import REPO, TINY_PARAMS, copy_project, stage_env, write_params

GPU_RULES = {"train", "evaluate"}
TIMEOUT = 1500      # seconds; the whole tiny workflow takes ~1-3 min on an idle 2-core machine


def project_with(tmp_path, device: str):
    proj = copy_project(tmp_path / "proj")
    write_params(proj, TINY_PARAMS | {"device": device})
    return proj


def snakemake(proj, *args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``snakemake --profile profiles/slurm ...`` bounded by ``timeout -k 30`` (a hung run ignores TERM)."""
    return subprocess.run(["timeout", "-k", "30", str(timeout), "snakemake", "--profile",
                           "profiles/slurm", *args], cwd=proj, env=stage_env(),
                          capture_output=True, text=True, timeout=timeout + 60)


def planned_resources(proj) -> dict[str, dict[str, str]]:
    """rule -> resources, from a dry run (no cluster needed)."""
    out = snakemake(proj, "--dry-run", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    plan = {}
    for rule, res in re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$",
                                text, flags=re.M):
        plan[rule] = dict(kv.split("=", 1) for kv in res.split(", "))
    assert {"fetch", "prepare", "train", "evaluate", "report"} <= set(plan), text[-3000:]
    return plan


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_gpu_is_requested_only_when_params_ask_for_cuda(tmp_path, device):
    plan = planned_resources(project_with(tmp_path, device))
    for rule, res in plan.items():
        wants = device == "cuda" and rule in GPU_RULES
        assert int(res.get("gpu", 0)) == int(wants), f"rule {rule} with device {device}: {res}"


@pytest.mark.cluster
@pytest.mark.slow       # about 110 s, most of it the SLURM plugin's status polling between job levels
def test_pipeline_runs_on_slurm_and_gpu_jobs_get_the_gpu(tmp_path, slurm_cluster):
    proj = project_with(tmp_path, "cuda")
    run = snakemake(proj)
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"snakemake exited {run.returncode}:\n{log[-5000:]}"
    report = (proj / "reports/report.md").read_text()
    assert "| rbm |" in report

    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log)
    rules = {rule for _, rule in submitted}
    assert {"fetch", "prepare", "train", "evaluate", "report"} <= rules, log[-3000:]
    for job_id, rule in submitted:
        info = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                              text=True).stdout
        assert "JobState=COMPLETED" in info, f"SLURM job {job_id} ({rule}): {info}"
        has_gpu = "gres:gpu:1" in info or "gres/gpu=1" in info
        assert has_gpu == (rule in GPU_RULES), f"SLURM job {job_id} ({rule}) GPU mismatch: {info}"
    train_log = next((proj / "logs/train").glob("*.log")).read_text()
    assert "CUDA is unavailable: using the CPU" in train_log
    print(f"\n{len(submitted)} SLURM jobs completed ({sorted(rules)}); "
          f"{sum(r in GPU_RULES for _, r in submitted)} on the fake GPU")


@pytest.mark.cluster
@pytest.mark.slow       # 142 s of SLURM jobs (machine shared); the default command keeps two workers sharing
                        # one storage (test_tune.py) and PostgreSQL's one-study opening
def test_tune_workers_are_slurm_jobs_sharing_one_postgresql_study(tmp_path, slurm_cluster,
                                                                  fresh_database):
    """Optuna's distributed mode on the cluster: two tune_worker jobs at once, one study in
    the PostgreSQL server (as the MLflow server's), exactly the budget, no password in git."""
    import json

    import optuna
    import yaml
    proj = copy_project(tmp_path / "proj")
    write_params(proj, TINY_PARAMS | {"tuned": "configs/tuned"})
    (proj / "configs/search.yaml").write_text(yaml.safe_dump({
        "runs": [{"dataset": "bars_stripes", "model": "rbm"}], "trials": 4, "workers": [0, 1],
        "trial_cpu_seconds": 5, "budget": {"ais_chains": 5, "ais_betas": 20},
        "models": {"rbm": {"objective": "likelihood", "train": {"epochs": [2, 6]},
                           "model": {"lr": {"low": 0.01, "high": 0.2, "log": True}}}}}))
    run = subprocess.run(["timeout", "-k", "30", str(TIMEOUT), "snakemake", "--profile",
                          "profiles/slurm", "tune"], cwd=proj, capture_output=True, text=True,
                         env=stage_env(GM_OPTUNA_STORAGE=fresh_database), timeout=TIMEOUT + 60)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    workers = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_tune_worker/", log)
    assert len(set(workers)) == 2, log[-3000:]
    for job_id in workers:
        info = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                              text=True).stdout
        assert "JobState=COMPLETED" in info, info
    records = [json.loads((proj / f"configs/studies/bars_stripes/rbm/workers/worker{w}.json")
                          .read_text()) for w in (0, 1)]
    assert sorted(n for r in records for n in r["trials"]) == [0, 1, 2, 3]
    study = optuna.load_study(study_name=records[0]["study"], storage=fresh_database)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 4
    tuned = (proj / "configs/tuned/bars_stripes/rbm.yaml").read_text()
    password = fresh_database.split("://", 1)[1].split("@")[0].partition(":")[2]
    assert "postgresql" in tuned and ":***@" in tuned and f":{password}@" not in tuned


@pytest.mark.slow       # 50 s of SLURM polling for two one-line jobs
@pytest.mark.cluster
def test_a_retried_jobs_failed_attempt_keeps_its_log(tmp_path, slurm_cluster):
    """Snakemake empties a job's log: when it retries the job; with the profile's settings
    (retries, show-failed-logs) the failed attempt's log stays readable in Snakemake's own
    log (profiles/README.md says where)."""
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text(
        'rule flaky:\n    output: "out.txt"\n    log: "logs/flaky.log"\n'
        '    shell: "if [ -e tried ]; then echo second attempt >&2; touch {output}; '
        'else touch tried; echo failed attempt $((6 * 7)) >&2; exit 1; fi 2> {log}"\n')
    run = snakemake(tmp_path, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (tmp_path / "logs/flaky.log").read_text().strip() == "second attempt"
    own = "".join(p.read_text() for p in (tmp_path / ".snakemake/log").glob("*.snakemake.log"))
    assert "failed attempt 42" in own    # its output (the command, printed, says $((6 * 7)))
    assert len(list((tmp_path / "logs/slurm/rule_flaky").glob("*.log"))) == 2   # 2 SLURM jobs
