"""Shared test setup: quiet progress bars, one torch thread, and a scratch project factory."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

pytest_plugins = ["cluster_fixtures"]
os.environ.setdefault("GM_PROGRESS", "0")
# the memory estimates' cache (pipeline/memory.py): the session's own, never the user's
os.environ["GM_CACHE_DIR"] = tempfile.mkdtemp(prefix="gm-bench-cache-")
atexit.register(shutil.rmtree, os.environ["GM_CACHE_DIR"], True)
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The files whose tests run longest (a minute or more of pipeline runs), longest first.
# scripts/test.sh hands whole files to two workers in collection order (pytest-xdist's
# --dist loadfile --no-loadscope-reorder): these go first, so the two finish together.
LONG_FILES = ("test_pipeline.py", "test_dvc_reruns.py", "test_warm.py", "test_tune.py",
              "test_report_html.py")


def pytest_collection_modifyitems(items) -> None:
    """The files of LONG_FILES first (a stable sort: every other order is kept)."""
    missing = [name for name in LONG_FILES if not (ROOT / "tests" / name).is_file()]
    if missing:   # a renamed file would quietly lose its place at the front
        raise pytest.UsageError(f"tests/conftest.py LONG_FILES: no file {', '.join(missing)} "
                                "in tests/ (rename it there too)")
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def make_project(path: Path, params: dict) -> Path:
    """A scratch copy of the repository's pipeline files and library (the stages import gm from
    the working directory, and code is a declared input) with its own params.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    for name in ("pipeline", "configs", "gm"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(cmd: list[str], cwd: Path, timeout: int = 600, check: bool = True, env=None):
    """Run a command with the test interpreter's bin dir first on PATH."""
    e = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", GM_PROGRESS="0",
             MLFLOW_TRACKING_URI="")
    e.pop("MLFLOW_TRACKING_URI")
    e |= env or {}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def tiny_params(**models) -> dict:
    """A params dict that trains quickly on bars_stripes (and digits if asked)."""
    return {
        "seed": 7, "seeds": [0], "device": "cpu",
        "datasets": {"bars_stripes": {}},
        "evaluate": {"ais_chains": 20, "ais_betas": 100, "n_samples": 64, "n_bootstrap": 10,
                     "metric_images": 0, "parzen_samples": 200, "importance_samples": 50},
        "runs": [{"dataset": "bars_stripes", "model": "rbm"}],
        "models": models or {"rbm": {"train": {"epochs": 3, "batch_size": 50},
                                     "model": {"n_hidden": 8}}},
    }


@pytest.fixture
def project(tmp_path):
    """Factory: project(params) -> path of a scratch project."""
    def make(params=None, name="proj"):
        return make_project(tmp_path / name, params or tiny_params())
    return make


@pytest.fixture(autouse=True)
def _torch_state_kept():
    """A test that leaves torch's process-wide state changed (gradients off, a mode such as the
    meta device left on the function-mode stack) errors here, not in a later test it breaks."""
    yield
    changed = []
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        changed.append("gradients left off")
    if torch._C._len_torch_function_stack():
        while torch._C._len_torch_function_stack():
            torch._C._pop_torch_function_stack()
        changed.append("a torch function mode left on (e.g. torch.device('meta'))")
    if changed:
        pytest.fail("this test changed torch's global state: " + "; ".join(changed))
