"""Corrupt or missing inputs: each stage stops before any work with one line on stderr,
``error: <file>: <problem> (<fix>)``, no traceback, and leaves every result file as it was.

Each case runs the real stage (``python -m pipeline.<stage>``, or ``snakemake`` where the case
is about Snakemake) in a scratch project holding a finished tiny run (tests/cluster_fixtures.py).
A test fails when a stage prints a traceback, prints more or other than one such line, exits 0,
or writes, deletes or changes any file under data/, results/ or reports/ besides the damaged one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cluster_fixtures import run_stage, stage_env, tiny_params, write_params
from conftest import run

RUN = Path("results/bars_stripes/rbm/seed0")
NPZ = Path("data/processed/bars_stripes.npz")
CLF = Path("results/bars_stripes/classifier.pt")
FLAGS = {"dataset": "bars_stripes", "model": "rbm", "seed": 0}
LINE = re.compile(r"^error: (?P<file>\S+): (?P<problem>.+) \((?P<fix>[^()]*(\([^()]*\))?[^()]*)\)$")


# --- helpers ------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under data/, results/ and reports/ (the outputs a stage may touch),
    but the MLflow journals: the report stage replays them whatever its inputs."""
    out = {}
    for top in ("data", "results", "reports"):
        for f in sorted((root / top).rglob("*")) if (root / top).exists() else ():
            if f.is_file() and not f.name.startswith("mlflow_"):
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_one_line(proc: subprocess.CompletedProcess, file: str, fix: str) -> dict:
    """The stage failed with exactly one ``error: <file>: <problem> (<fix>)`` line, last on
    stderr, naming ``file`` and a fix containing ``fix``, and no traceback."""
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert proc.stderr.strip().splitlines()[-1] == lines[0], err
    m = LINE.match(lines[0])
    assert m, f"not of the form 'error: <file>: <problem> (<fix>)': {lines[0]}"
    assert m["file"].rstrip(":") == file or file in m["file"], lines[0]
    assert fix in m["fix"], lines[0]
    return m.groupdict()


def failing(root: Path, stage: str, damaged: Path | None, file: str, fix: str, **flags) -> dict:
    """Run ``stage`` in ``root``, assert the one-line failure and that no output other than
    ``damaged`` changed, appeared or vanished."""
    before = snapshot(root)
    proc = run_stage(root, stage, check=False, **flags)
    after = snapshot(root)
    if damaged is not None:
        before.pop(str(damaged), None)
        after.pop(str(damaged), None)
    assert after == before, "outputs changed: " + ", ".join(
        sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}))
    return assert_one_line(proc, file, fix)


@pytest.fixture(scope="module")
def finished(prepared_data, tmp_path_factory) -> Path:
    """A tiny project after prepare, classifier, train and evaluate of bars_stripes/rbm/seed0."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(prepared_data, root / "data")
    write_params(root, tiny_params())
    for stage, flags in (("classifier", {"dataset": "bars_stripes"}), ("train", FLAGS),
                         ("evaluate", FLAGS)):
        run_stage(root, stage, **flags)
    return root


@pytest.fixture
def ws(finished, tmp_path) -> Path:
    """A private copy of the finished project to damage."""
    dest = tmp_path / "ws"
    shutil.copytree(finished, dest, symlinks=True)
    return dest


# --- 1. data/processed/<ds>.npz -----------------------------------------------------------------
def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path) -> None:
    """Flip one bit inside the compressed x_val member (zipfile's CRC-32 or zlib catches it)."""
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


def _edit(p: Path) -> None:
    """A valid .npz whose arrays differ from the ones prepare recorded (sha256 catches it)."""
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"] = 1.0 - arrays["x_train"]
    with open(p, "wb") as f:
        np.savez_compressed(f, **arrays)


@pytest.mark.parametrize("damage, problem", [
    ("truncated", "BadZipFile"), ("bit_flip", "CRC-32"), ("empty", "EOFError"),
    ("edited", "checksum mismatch"), ("missing", "missing")])
def test_damaged_dataset_stops_train_with_one_line(ws, damage, problem):
    npz = ws / NPZ
    {"truncated": _truncate, "bit_flip": _flip, "empty": lambda p: p.write_bytes(b""),
     "edited": _edit, "missing": Path.unlink}[damage](npz)
    shutil.rmtree(ws / RUN)              # a fresh training run: nothing of it may appear
    m = failing(ws, "train", NPZ, str(NPZ), "the prepare stage: python -m pipeline.prepare "
                "--dataset bars_stripes", **FLAGS)
    assert problem in m["problem"]
    assert m["fix"].startswith("run" if damage == "missing" else "delete it and rerun")


def test_damaged_dataset_stops_classifier_and_evaluate(ws):
    _flip(ws / NPZ)
    failing(ws, "classifier", NPZ, str(NPZ), "rerun the prepare stage", dataset="bars_stripes")
    failing(ws, "evaluate", NPZ, str(NPZ), "rerun the prepare stage", **FLAGS)


def test_every_single_bit_flip_is_refused_or_harmless(finished, tmp_path):
    """Sampled bit flips and cuts of a prepared .npz: load_splits either raises DataError in
    the one-line form or returns exactly the prepared data (a flip in zip metadata numpy does
    not use); never another exception."""
    from gm.data.splits import data_dim_of, load_splits
    from gm.errors import DataError
    good = (finished / NPZ).read_bytes()
    ref = load_splits(finished / NPZ)
    rng = random.Random(0)
    bad = tmp_path / "bars_stripes.npz"
    positions = range(0, len(good), max(1, len(good) // 400))
    refused = 0
    for i in positions:
        data = bytearray(good)
        data[i] ^= 1 << rng.randrange(8)
        for blob in (bytes(data), good[:i]):
            bad.write_bytes(blob)
            data_dim_of(bad)                 # never raises
            try:
                s = load_splits(bad)
            except DataError as err:
                assert LINE.match(f"error: {err}"), str(err)
                refused += 1
                continue
            assert s.checksum() == ref.checksum() and s.image_shape == ref.image_shape
            assert (s.name, s.n_classes, s.levels, s.binarization) == \
                (ref.name, ref.n_classes, ref.levels, ref.binarization)
    assert refused > len(positions)


# --- 2. train.json and eval.json ----------------------------------------------------------------
@pytest.mark.parametrize("damage, problem", [
    ("missing", "missing"), ("invalid", "not valid JSON"), ("empty", "empty"),
    ("no_seconds", "train_seconds: missing"), ("nan_seconds", "train_seconds: expected")])
def test_bad_train_json_stops_evaluate_with_one_line(ws, damage, problem):
    path = ws / RUN / "train.json"
    info = json.loads(path.read_text())
    if damage == "missing":
        path.unlink()
    elif damage == "invalid":
        path.write_text(path.read_text()[:40])
    elif damage == "empty":
        path.write_text("")
    elif damage == "no_seconds":
        path.write_text(json.dumps({k: v for k, v in info.items() if k != "train_seconds"}))
    else:
        path.write_text(json.dumps(info | {"train_seconds": float("nan")}))
    for f in ("eval.json", "samples.png", "per_example.npz"):
        (ws / RUN / f).unlink(missing_ok=True)   # a fresh evaluation: nothing may appear
    m = failing(ws, "evaluate", RUN / "train.json", str(RUN / "train.json"),
                "rerun the train stage: python -m pipeline.train --dataset bars_stripes "
                "--model rbm --seed 0", **FLAGS)
    assert problem in m["problem"]
    assert m["fix"].startswith("rerun" if damage == "missing" else "delete it and rerun")


@pytest.mark.parametrize("damage, problem", [
    ("invalid", "not valid JSON"),
    ("nan_mean", "test_log_likelihood.mean: NaN where a number is required"),
    ("no_mean", "test_log_likelihood.mean: missing"),
    ("train_json_missing", "missing")])
def test_bad_eval_json_stops_report_with_one_line(ws, damage, problem):
    path = ws / RUN / "eval.json"
    ev = json.loads(path.read_text())
    damaged, fix = RUN / "eval.json", "rerun the evaluate stage"
    if damage == "invalid":
        path.write_text(path.read_text()[:100])
    elif damage == "nan_mean":
        ev["test_log_likelihood"]["mean"] = float("nan")
        path.write_text(json.dumps(ev))       # json writes NaN, as evaluate would
    elif damage == "no_mean":
        del ev["test_log_likelihood"]["mean"]
        path.write_text(json.dumps(ev))
    else:
        damaged, fix = RUN / "train.json", "rerun the train stage"
        (ws / damaged).unlink()
    m = failing(ws, "report", damaged, str(damaged), fix)
    assert problem in m["problem"]
    assert not (ws / "reports").exists()


def test_eval_record_reader_names_file_key_and_fix(tmp_path):
    """In-process: every way an eval.json can be bad gives one RecordError line."""
    from pipeline.record import EvalRecord, RecordError
    path = tmp_path / RUN / "eval.json"
    path.parent.mkdir(parents=True)
    cmd = "rerun the evaluate stage: python -m pipeline.evaluate --dataset bars_stripes " \
          "--model rbm --seed 0"
    for text, problem, fix in [
            (None, "missing", cmd), ("", "empty", "delete it and " + cmd),
            ("[1, 2]", "expected a mapping, got list", "delete it and " + cmd),
            ('{"dataset": "bars_stripes"', "not valid JSON", "delete it and " + cmd)]:
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        with pytest.raises(RecordError) as err:
            EvalRecord.read(path)
        m = LINE.match(f"error: {err.value}")
        assert m and m["file"] == str(path) and problem in m["problem"] and m["fix"] == fix, \
            str(err.value)


# --- 3. classifier.pt ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "missing"])
def test_bad_classifier_stops_evaluate_before_any_work(ws, damage):
    import torch
    path = ws / CLF
    if damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint\xff" * 64)
    elif damage == "truncated":
        torch.save({"config": {"data_dim": 16}, "state_dict": {"w": torch.zeros(1000)}}, path)
        _truncate(path)
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.unlink()
    for f in ("eval.json", "samples.png", "per_example.npz"):
        (ws / RUN / f).unlink(missing_ok=True)   # nothing of the evaluation may appear
    m = failing(ws, "evaluate", CLF, str(CLF),
                "the classifier stage: python -m pipeline.classifier --dataset bars_stripes",
                **FLAGS)
    assert (damage == "missing") == (m["problem"] == "missing")


# --- 4. a read-only run folder ------------------------------------------------------------------
def _as_unprivileged(cmd: list[str]) -> list[str]:
    """root ignores permission bits (CAP_DAC_OVERRIDE): run without those capabilities."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]


@pytest.mark.parametrize("stage, fresh", [("train", True), ("evaluate", False)])
def test_read_only_run_folder_fails_before_any_work(ws, stage, fresh):
    from cluster_fixtures import stage_cmd
    folder = ws / RUN
    if fresh:
        shutil.rmtree(folder)
        folder.mkdir()
    folder.chmod(0o555)
    try:
        before = snapshot(ws)
        proc = subprocess.run(_as_unprivileged(stage_cmd(stage, **FLAGS)), cwd=ws,
                              env=stage_env(), capture_output=True, text=True, timeout=300,
                              check=False)
        assert snapshot(ws) == before
    finally:
        folder.chmod(0o755)
    m = assert_one_line(proc, str(RUN), f"chmod u+w {RUN}")
    assert "not writable" in m["problem"]
    assert "trained" not in proc.stderr and "test log p(x)" not in proc.stderr  # no work done


def test_read_only_results_folder_names_the_folder_that_refuses(ws):
    from cluster_fixtures import stage_cmd
    shutil.rmtree(ws / RUN)
    parent = ws / RUN.parent
    parent.chmod(0o555)
    try:
        proc = subprocess.run(_as_unprivileged(stage_cmd("train", **FLAGS)), cwd=ws,
                              env=stage_env(), capture_output=True, text=True, timeout=300,
                              check=False)
    finally:
        parent.chmod(0o755)
    m = assert_one_line(proc, str(RUN), f"chmod u+w {RUN.parent}")
    assert f"cannot be created: {RUN.parent} is not writable" in m["problem"]


# --- 5. params.yaml -----------------------------------------------------------------------------
DUPLICATE = """\
  rbm:
    train: {epochs: 2, batch_size: 100}
    model:
      n_hidden: 8
      lr: 0.05
      lr: 0.5
"""


def _params_text(model_block: str) -> str:
    import yaml
    p = tiny_params()
    del p["models"]
    return yaml.safe_dump(p, sort_keys=False) + "models:\n" + model_block


def _expected(problem: str, text: str) -> str:
    """``problem`` with {0.05}-style placeholders replaced by the line holding ``lr: 0.05``."""
    lines = text.splitlines()
    return re.sub(r"\{([^}]+)\}", lambda m: str(next(
        i + 1 for i, ln in enumerate(lines) if ln.strip() == f"lr: {m[1]}")), problem)


MEMORY = {"GM_MEMORY_GB": "16"}   # the memory to compare with, the same on every machine


@pytest.mark.parametrize("block, problem, fix", [
    (DUPLICATE, "line {0.5}: models.rbm.model.lr is given twice (first on line {0.05})",
     "keep one"),
    (DUPLICATE.replace("      lr: 0.5\n", "").replace("0.05", "1e-3"),
     "line {1e-3}: models.rbm.model.lr: 1e-3 is text to PyYAML", "write 1.0e-3"),
    (DUPLICATE.replace("      lr: 0.5\n", "").replace("0.05", ".inf"),
     "models.rbm.model.lr: must be a finite number, got inf", ""),
    (DUPLICATE.replace("      lr: 0.5\n", "").replace("0.05", "1.0e+300"),
     "models.rbm.model.lr: 1e+300 overflows float32", ""),
    (DUPLICATE.replace("      lr: 0.5\n", "").replace("n_hidden: 8", "n_hidden: 1000000000"),
     "models.rbm.model.n_hidden: 1000000000 needs 253 GiB of memory to train on bars_stripes",
     "than this machine's 16 GiB (lower it)"),
])
def test_bad_params_stop_train_before_any_work(ws, block, problem, fix):
    text = _params_text(block)
    (ws / "params.yaml").write_text(text)
    problem = _expected(problem, text)
    shutil.rmtree(ws / RUN)
    before = snapshot(ws)
    proc = run_stage(ws, "train", check=False, env=stage_env(**MEMORY), **FLAGS)
    assert snapshot(ws) == before
    err = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert lines[0].startswith(f"error: params.yaml: {problem}") and fix in lines[0], lines[0]


@pytest.mark.parametrize("block, problem", [
    (DUPLICATE, "line {0.5}: models.rbm.model.lr is given twice (first on line {0.05})"),
    (DUPLICATE.replace("      lr: 0.5\n", "").replace("n_hidden: 8", "n_hidden: 1000000000"),
     "models.rbm.model.n_hidden: 1000000000 needs at least 29.8 GiB of memory"),
])
def test_snakemake_refuses_bad_params_with_one_line(project, block, problem):
    """Snakemake loads params.yaml with plain PyYAML (duplicates kept silently); the Snakefile
    re-reads it strictly and estimates every model's memory before anything runs (the data is
    not prepared yet, so the estimate is a lower bound)."""
    path = project(tiny_params())
    text = _params_text(block)
    (path / "params.yaml").write_text(text)
    problem = _expected(problem, text)
    proc = run(["snakemake", "--cores", "1"], path, check=False, env=MEMORY)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and len(out) == 1, out
    assert out[0].startswith(f"error: params.yaml: {problem}"), out
    assert not (path / "data").exists() and not (path / "results").exists()
