"""A second machine reproduces the report from a DVC remote without retraining.

Machine A: ``dvc repro`` the tiny experiment, ``dvc push`` data and models to a local-directory
remote, commit. Machine B: ``git clone``, ``dvc pull``, ``dvc repro``: no stage but the report may
run (DVC finds every training and evaluation output up to date), and the numbers are A's.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster_fixtures import TINY_PARAMS, VENV_BIN, copy_project, stage_env, write_params

GIT_ENV = {"GIT_AUTHOR_NAME": "gm-bench test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "gm-bench test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def sh(cwd: Path, *cmd: str, timeout: float = 1200) -> str:
    exe = str(VENV_BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=stage_env(**GIT_ENV), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def tracked_outputs(root: Path) -> dict[str, bytes]:
    """Every model, metrics and report file the pipeline produced, by relative path."""
    files = [*root.glob("results/**/model.pt"), *root.glob("results/**/*.json"),
             *root.glob("reports/*.csv")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_clone_pulls_from_remote_and_reproduces_report_without_retraining(tmp_path):
    a, b, remote = tmp_path / "machine_a", tmp_path / "machine_b", tmp_path / "remote"
    copy_project(a)
    write_params(a, TINY_PARAMS)
    sh(a, "git", "init", "-q", "-b", "main")
    if not (a / ".dvc").exists():
        sh(a, "dvc", "init", "-q")
    sh(a, "dvc", "remote", "add", "-d", "storage", str(remote))
    sh(a, "dvc", "repro")
    sh(a, "dvc", "push")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "experiment")
    assert any(remote.rglob("*")), "dvc push stored nothing in the remote"

    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert not (b / "data").exists() and not list(b.glob("results/**/model.pt"))
    sh(b, "dvc", "pull")
    out = sh(b, "dvc", "repro")
    ran = sorted({line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")})
    assert all(stage == "report" for stage in ran), (
        f"the clone re-ran {ran}: an output was neither in git nor in the remote\n{out[-3000:]}")
    # the default pipeline (dvc.yaml); the tune stages of configs/studies/dvc.yaml are never
    # part of it (their records are committed, their inputs not pulled)
    assert sh(b, "dvc", "status", "dvc.yaml").strip().endswith("Data and pipelines are up to date.")

    want, got = tracked_outputs(a), tracked_outputs(b)
    assert any(k.endswith("model.pt") for k in want)
    assert set(got) >= set(want)
    for path in want:
        if path.endswith(("model.pt", "train.json", "eval.json")):
            assert got[path] == want[path], f"{path} differs on the second machine"
    assert (b / "reports/report.md").exists()
    print(f"\nclone pulled {len(want)} outputs; dvc repro ran {ran or 'nothing'}")
