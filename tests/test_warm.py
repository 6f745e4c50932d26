"""Warm starts (pipeline/warm.py): stage processes forked from a server that has imported
torch and the stages give the same numbers as cold ones, and die and fail as processes do."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, make_project, run, tiny_params

TIMING = {"train_seconds", "eval_seconds", "epoch_seconds", "cost", "mlflow_run_uid"}


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def results(project: Path) -> dict:
    return {str(p.relative_to(project)): strip(json.loads(p.read_text()))
            for p in sorted(project.glob("results/*/*/seed*/*.json"))}


def test_warm_and_cold_runs_give_the_same_numbers(tmp_path):
    warm = make_project(tmp_path / "warm", tiny_params())
    cold = make_project(tmp_path / "cold", tiny_params())
    run(["snakemake", "--cores", "2"], warm)
    run(["snakemake", "--cores", "2"], cold, env={"GM_WARM": "0"})
    forked = (warm / "logs" / "warm.log").read_text()
    assert "forked pipeline.train" in forked and "forked pipeline.evaluate" in forked
    assert "runs cold" not in forked
    deadline = time.monotonic() + 30       # the server's last line: after Snakemake's exit
    while "served" not in (warm / "logs" / "warm.log").read_text():
        assert time.monotonic() < deadline, "the server did not say what it served"
        time.sleep(0.1)
    assert re.search(r"served \d+ jobs warm, 0 cold; the warm jobs' CPU: [\d.]+ s user",
                     (warm / "logs" / "warm.log").read_text())
    assert not (cold / "logs" / "warm.log").exists()
    assert results(warm) == results(cold) and results(warm)


@pytest.fixture
def server(tmp_path):
    """A server for a prepared tiny project; yields (project, socket, server process)."""
    project = make_project(tmp_path / "p", tiny_params())
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GM_WARM="0")
    for stage in ("fetch", "prepare"):
        run(["python", "-m", f"pipeline.{stage}", "--dataset", "bars_stripes"], project)
    sock = tmp_path / "gm-warm-test" / "socket"
    sock.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.warm", "--socket", str(sock),
                             "--parent", str(os.getpid())], cwd=project, env=env,
                            stderr=open(tmp_path / "warm.log", "w"),
                            preexec_fn=dispositions(ignore_sigint=True))   # not the clients'
    # (its children take the dispositions of the process they run for)
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield project, sock, proc
    proc.kill()
    proc.wait()


def dispositions(ignore_sigint: bool):
    """preexec_fn: SIGINT ignored (as under `nohup`, or `cmd &` in a script) or default,
    whatever the test runner's own disposition is."""
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint
                                 else signal.SIG_DFL)


def train(project: Path, sock: Path, epochs: int = 10**6, ignore_sigint: bool = False,
          **env) -> subprocess.Popen:
    """A train process that hands itself to the server; by default far too long to finish
    (400 epochs take 0.7 s): every test of a running job ends it."""
    params = tiny_params()
    params["models"]["rbm"]["train"]["epochs"] = epochs
    (project / "long.yaml").write_text(json.dumps(params))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GM_WARM=str(sock),
               GM_MEMORY_CHECKED="1", **env)
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", "--dataset", "bars_stripes",
                             "--model", "rbm", "--seed", "0", "--params", "long.yaml"],
                            cwd=project, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=dispositions(ignore_sigint))


def children(server: subprocess.Popen, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        if kids:
            return [int(k) for k in kids]
        time.sleep(0.05)
    raise AssertionError("no child was forked")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):
            return True
        if "Z" in state.split()[1]:
            return True
        time.sleep(0.05)
    return False


def running_job(server, **kw) -> tuple[subprocess.Popen, int]:
    """A long train job handed to ``server``: its process and the server's child running it."""
    project, sock, proc = server
    client = train(project, sock, **kw)
    return client, children(proc)[0]


def test_a_killed_stage_process_takes_its_child_with_it(server):
    client, child = running_job(server)
    client.kill()
    client.wait()
    assert gone(child)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_reach_the_child_and_its_end_is_the_process_end(server, sig):
    client, child = running_job(server)
    client.send_signal(sig)
    rc = client.wait(timeout=60)
    assert gone(child)
    assert rc == -sig, rc       # as a cold process: killed by SIGTERM; by SIGINT after the
    #                             KeyboardInterrupt's traceback (python's own exit)


def test_a_signal_at_the_fork_is_neither_lost_nor_an_error(server):
    """A SIGINT that reaches the child while it is still setting itself up (sent the moment it
    appears; the server ignores SIGINT, as under nohup) ends it as it ends a running stage:
    by SIGINT, the client too; not lost (the job would run on) nor exit status 70."""
    project, sock, proc = server
    client = train(project, sock)
    tasks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 60
    while not (kids := tasks.read_text().split()):
        assert time.monotonic() < deadline, "no child was forked"
    os.kill(int(kids[0]), signal.SIGINT)
    assert client.wait(timeout=60) == -signal.SIGINT
    assert gone(int(kids[0]))


def test_a_signal_the_stage_process_ignores_its_child_ignores(server):
    """Started with SIGINT ignored (nohup), a cold stage would keep running after SIGINT: so
    does the child; SIGTERM still ends it."""
    client, child = running_job(server, ignore_sigint=True)
    client.send_signal(signal.SIGINT)
    os.kill(child, signal.SIGINT)
    assert not gone(child, timeout=1.5) and client.poll() is None
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == -signal.SIGTERM
    assert gone(child)


def test_a_killed_server_fails_its_jobs_with_one_line(server):
    client, child = running_job(server)
    proc = server[2]
    proc.kill()
    proc.wait()
    _, err = client.communicate(timeout=60)
    assert client.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: the warm-start server ended")
    assert gone(child)


def test_a_changed_source_file_runs_cold(server, tmp_path):
    """After a source file changes, the next job runs cold and succeeds, and the server stops
    listening at once although a job it forked before still runs: later jobs start cold
    without waiting for that one to end."""
    project, sock, proc = server
    long_job, child = running_job(server)
    os.utime(project / "pipeline" / "prepare.py", ns=(time.time_ns(), time.time_ns()))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GM_WARM=str(sock))
    done = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--dataset", "bars_stripes"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "warm.log").read_text()
    assert "pipeline.prepare --dataset bars_stripes runs cold: source files changed" in log
    assert long_job.poll() is None and not gone(child, timeout=0.1)
    assert not sock.exists()
    with pytest.raises(OSError):                   # nothing listens: a client starts cold
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(str(sock))
    long_job.kill()
    long_job.wait()
    assert gone(child)
    proc.wait(timeout=60)                          # its last child gone, the server ends


def test_jobs_the_server_cannot_run_as_they_would_run_start_cold(server, tmp_path):
    """A job whose import-time variables differ from the server's (here GM_ONEDNN, read when
    gm/linalg.py is imported), and a job of another copy of the project, run in their own
    process and still succeed; a job like the server's is forked."""
    project, sock, proc = server
    other = make_project(tmp_path / "other", tiny_params())
    run(["python", "-m", "pipeline.fetch", "--dataset", "bars_stripes"], other,
        env={"GM_WARM": "0"})
    run(["python", "-m", "pipeline.prepare", "--dataset", "bars_stripes"], other,
        env={"GM_WARM": "0"})
    for where, env in ((project, {"GM_ONEDNN": "0"}), (other, {}), (project, {})):
        client = train(where, sock, epochs=2, **env)
        _, err = client.communicate(timeout=300)
        assert client.returncode == 0, err[-2000:]
        assert (where / "results/bars_stripes/rbm/seed0/train.json").is_file()
    log = (tmp_path / "warm.log").read_text()
    assert "runs cold: GM_ONEDNN differ from the server's" in log
    assert f"runs cold: its stage file {(other / 'pipeline/train.py').resolve()} is not" in log
    assert log.count("forked pipeline.train") == 1
