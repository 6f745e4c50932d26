"""Fixtures for the cluster, tracking-server, DVC-remote and fault tests.

Loaded by tests/conftest.py (``pytest_plugins = ["cluster_fixtures"]``).

Every test here runs the real stages (``python -m pipeline.<stage>``) as separate processes in a
scratch project directory holding a tiny params.yaml, so a kill, a crash or a lock is real.
Services: PostgreSQL is started by the fixture itself (scripts/postgres-up.sh, as root) and
stopped again if it started it; SLURM must already be up (scripts/slurm-up.sh; CI starts it),
otherwise the cluster test is skipped with the command to run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent

# A tiny experiment: one RBM on bars_stripes (d=16, exact likelihood), cheap estimator budgets.
TINY_PARAMS = {
    "seed": 11,
    "seeds": [0],
    "device": "cpu",
    "datasets": {"bars_stripes": {}},
    "evaluate": {"ais_chains": 8, "ais_betas": 50, "importance_samples": 20,
                 "parzen_samples": 100, "n_samples": 64, "n_bootstrap": 5, "metric_images": 0},
    "runs": [{"dataset": "bars_stripes", "model": "rbm"}],
    "models": {"rbm": {"train": {"epochs": 6, "batch_size": 100, "checkpoint_every": 2},
                       "model": {"n_hidden": 8, "lr": 0.05}}},
}


def tiny_params(**models) -> dict:
    """TINY_PARAMS with ``models.rbm`` blocks replaced/extended by ``models`` (deep-copied)."""
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    for name, block in models.items():
        params["models"][name] = block
    return params


def write_params(workdir: Path, params: dict) -> Path:
    path = Path(workdir) / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_env(**extra: str) -> dict[str, str]:
    """Environment of a stage process: quiet, single-threaded, default MLflow store unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(GM_PROGRESS="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]))
    env.update(extra)
    return env


def stage_cmd(stage: str, **flags) -> list[str]:
    cmd = [sys.executable, "-m", f"pipeline.{stage}"]
    for k, v in flags.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def run_stage(workdir: Path, stage: str, *, env: dict | None = None, timeout: float = 300,
              check: bool = True, **flags) -> subprocess.CompletedProcess:
    """Run one stage to completion in ``workdir``; on failure show its stderr."""
    proc = subprocess.run(stage_cmd(stage, **flags), cwd=workdir, env=env or stage_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{stage} {flags} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_files() -> list[str]:
    """The project's files as git sees them (tracked + new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def copy_project(dest: Path) -> Path:
    """Copy the project's source (no data, results, stores, committed report) to ``dest``."""
    for rel in project_files():
        if rel.startswith("reports/"):  # the committed report would make the DAG look done
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


# --- data -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """A data/ folder with bars_stripes fetched and prepared once per session."""
    root = tmp_path_factory.mktemp("prepared")
    write_params(root, TINY_PARAMS)
    run_stage(root, "fetch", dataset="bars_stripes")
    run_stage(root, "prepare", dataset="bars_stripes")
    return root / "data"


@pytest.fixture
def workspace(tmp_path, prepared_data) -> Path:
    """A scratch working directory with TINY_PARAMS and the prepared data (no results yet)."""
    shutil.copytree(prepared_data, tmp_path / "data")
    write_params(tmp_path, TINY_PARAMS)
    return tmp_path


# --- services ---------------------------------------------------------------------------------
def _script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout)


def slurm_is_up() -> tuple[bool, str]:
    if shutil.which("sinfo") is None:
        return False, "SLURM is not installed: run `sudo scripts/slurm-up.sh` first"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                               text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "SLURM does not answer: run `scripts/slurm-down.sh && scripts/slurm-up.sh`"
    if "UP" not in ping.stdout:
        return False, "slurmctld is not up: run `sudo scripts/slurm-up.sh` first"
    if not any(s.strip() in ("idle", "mixed", "allocated") for s in nodes.stdout.split()):
        return False, f"no usable SLURM node (states: {nodes.stdout.split()}); rerun scripts/slurm-up.sh"
    return True, ""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip unless the local SLURM cluster answers (CI starts it with scripts/slurm-up.sh)."""
    ok, why = slurm_is_up()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_uri():
    """SQLAlchemy URI of the PostgreSQL of scripts/postgres-up.sh, started here if needed."""
    pytest.importorskip("psycopg2", reason="MLflow's PostgreSQL driver psycopg2-binary is missing")
    if os.geteuid() != 0:
        pytest.skip("scripts/postgres-up.sh needs root to install/start PostgreSQL")
    scratch = Path(os.environ.get("GM_SCRATCH", "/tmp/gm-bench-services"))
    was_up = (scratch / "postgres/run/postgres.pid").exists()
    up = _script("postgres-up.sh")
    if up.returncode != 0:
        pytest.fail(f"scripts/postgres-up.sh failed:\n{up.stderr[-2000:]}")
    yield up.stdout.strip().splitlines()[-1]
    if not was_up:
        _script("postgres-down.sh")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with start_new_session=True, and its children, by its own PID."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def drop_database(cur, name: str) -> None:
    """DROP DATABASE ``name`` if it exists, ending the sessions still on it.  WITH (FORCE) as
    the (non-superuser) MLflow role refuses to end an autovacuum worker ("must be a member of
    the role whose process is being terminated"), which the plain DROP ends by itself."""
    import psycopg2
    try:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def fresh_database(postgres_uri):
    """A new empty PostgreSQL database (dropped afterwards); yields its SQLAlchemy URI."""
    import psycopg2
    base, _, _ = postgres_uri.rpartition("/")
    name = f"mlflow_test_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    conn = psycopg2.connect(postgres_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{base}/{name}"
    finally:
        with conn.cursor() as cur:
            drop_database(cur, name)
        conn.close()


@contextlib.contextmanager
def mlflow_server_process(backend_uri: str, workdir: Path, port: int | None = None):
    """Run ``mlflow server`` on 127.0.0.1 over ``backend_uri`` until the block ends; yield its URL.

    Artifacts are proxied by the server into ``workdir/mlflow-artifacts``.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(workdir) / f"mlflow-server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(Path(workdir) / "mlflow-artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=workdir, env=stage_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            try:
                wait_http(f"{url}/health", timeout=240, proc=proc)
            except (RuntimeError, TimeoutError) as err:
                pytest.fail(f"{err}:\n{log_path.read_text()[-3000:]}")
            yield url
        finally:
            stop_process_group(proc)


@pytest.fixture
def mlflow_server(fresh_database, tmp_path):
    """A real ``mlflow server`` over a fresh PostgreSQL database; yields its URL."""
    with mlflow_server_process(fresh_database, tmp_path) as url:
        yield url
