"""One pending re-evaluation timer in Snakemake's job scheduler, instead of one per finished job.

Snakemake 9's scheduler loop (snakemake/scheduling/job_scheduler.py, ``JobScheduler.schedule``)
ends every pass by starting a new 1-second ``threading.Timer`` (its job rate limiter's
``_schedule_reevalutation``) whose release of the loop's semaphore starts the next pass.  Every
finished job also releases it, so each one adds a timer chain that never ends: after N jobs
the loop runs N passes a second, each over the whole DAG, and N threads wait at any time
(Snakemake issue #3804, pull request #3744).  In the default run (264 jobs) Snakemake's own
process used 126 s of CPU on the 2-core reference machine, taken from the jobs; with this patch
8 s, and the run took 8 min 50 s instead of 11 min 24 s (README, Benchmarks).

:func:`coalesce` makes the timer single: a pass starts one only when none is pending.  One
pending re-evaluation is all the rate limiter needs, since the pass it starts looks at every
job again and starts the next timer.  The timer is a daemon thread, so an exiting Snakemake
does not wait for it.  The Snakefile calls it while Snakemake reads the file, before the
scheduler exists.
"""
from __future__ import annotations

import threading


def coalesce() -> bool:
    """Patch ``JobScheduler._schedule_reevalutation`` (Snakemake's spelling) to keep at most one
    pending timer per scheduler.  Returns whether the patch is in place (False when this
    Snakemake has no such method: nothing is changed)."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    original = getattr(JobScheduler, "_schedule_reevalutation", None)
    if original is None:
        return False
    if getattr(original, "coalesced", False):
        return True
    lock = threading.Lock()

    def schedule_reevaluation(self, delay) -> None:
        with lock:
            if getattr(self, "_reevaluation_pending", False):
                return
            self._reevaluation_pending = True

        def fire():
            with lock:      # cleared before the release: the pass it starts may start the next
                self._reevaluation_pending = False
            self._open_jobs.release()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    schedule_reevaluation.coalesced = True
    JobScheduler._schedule_reevalutation = schedule_reevaluation
    return True
