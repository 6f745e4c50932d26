"""pipeline/scheduler_timers.py: a real Snakemake run of many short jobs keeps one pending
scheduler timer with the patch, and one per finished job without it (Snakemake issue #3804)."""
from pathlib import Path

import pytest

from conftest import ROOT, run

WORKFLOW = """
from pipeline import scheduler_timers
if config.get("patch"):
    assert scheduler_timers.coalesce()

rule all:
    input: "threads_at_end.txt"

rule start:   # a job's shell is a child of Snakemake's process: count that process's threads
    output: "threads_at_start.txt"
    shell: "ls /proc/$PPID/task | wc -l > {output}"

rule job:
    input: "threads_at_start.txt"
    output: "out/{i}.txt"
    shell: "sleep 0.05; touch {output}"

rule end:
    input: expand("out/{i}.txt", i=range(JOBS))
    output: "threads_at_end.txt"
    shell: "ls /proc/$PPID/task | wc -l > {output}"
"""

CORES = 2   # Snakemake's job threads grow to one per core: they may be added too


def added_threads(tmp_path: Path, patch: bool, jobs: int) -> int:
    """Threads of Snakemake's process after ``jobs`` finished jobs minus those before them."""
    work = tmp_path / ("patched" if patch else "plain")
    work.mkdir()
    (work / "Snakefile").write_text(f"JOBS = {jobs}\n" + WORKFLOW)
    run(["snakemake", "--cores", str(CORES), "--config", f"patch={patch}"], work, timeout=300,
        env={"PYTHONPATH": str(ROOT)})
    start, end = (int((work / f"threads_at_{t}.txt").read_text()) for t in ("start", "end"))
    return end - start


@pytest.mark.parametrize("patch", [True, False])
def test_one_pending_timer_whatever_the_number_of_finished_jobs(tmp_path, patch):
    added = added_threads(tmp_path, patch, jobs=40)
    if patch:
        assert added <= CORES + 1, f"{added} threads more after 40 jobs"
    else:   # the Snakemake behaviour the patch exists for; if this fails, the patch can go
        assert added >= 20, f"unpatched Snakemake added {added} threads: the upstream bug is gone"


def test_coalesce_is_idempotent():
    from pipeline import scheduler_timers
    from snakemake.scheduling.job_scheduler import JobScheduler
    assert scheduler_timers.coalesce() and scheduler_timers.coalesce()
    assert JobScheduler._schedule_reevalutation.coalesced
