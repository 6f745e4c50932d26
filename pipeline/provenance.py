"""Provenance fingerprints: every number tied to the code, params and data that made it.

A fingerprint is a dict of part digests plus their joint ``sha256``:

- train (train.json, checkpoints, MLflow tag ``gm.fingerprint``): ``params`` (the run's train
  settings, root seed, seed index, dataset options), ``data`` (the processed data's checksum
  and dimension), ``code`` (the source files the train stage runs for the model,
  :mod:`pipeline.code`);
- evaluate (eval.json): the train fingerprint of the checkpoint, ``settings`` (the resolved
  ``evaluate:`` settings of the run) and ``code`` (the evaluate stage's files);
- report (its header): params.yaml (merged), the code fingerprints of train and evaluate of
  every run, of the classifier and of the report, the data checksums.

Evaluate refuses a checkpoint whose params or data part differs from what the current params
and data imply; the Snakefile reruns a stage whose recorded settings differ from today's (so
results written by another runner, e.g. ``dvc repro`` with other values, are never taken as
up to date).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pipeline import code
from pipeline import params as P


def digest(value) -> str:
    """sha256 of ``value``'s canonical JSON (key order and formatting do not matter)."""
    return hashlib.sha256(P.canonical(value).encode()).hexdigest()


def train_params(params: dict, dataset: str, name: str, seed: int) -> dict:
    """What a training run's numbers depend on besides code and data."""
    return {"settings": P.train_settings(params, name, dataset), "root_seed": params["seed"],
            "seed": seed, "dataset": dataset,
            "dataset_options": params["datasets"].get(dataset) or {}}


def _joint(parts: dict) -> dict:
    return parts | {"sha256": digest(parts)}


def train_fingerprint(params: dict, dataset: str, name: str, seed: int, *,
                      data_checksum: str, data_dim: int) -> dict:
    """The fingerprint of training run (dataset, name, seed) on data of that checksum."""
    registered = P.registered_model(params, name)
    return _joint({"params": digest(train_params(params, dataset, name, seed)),
                   "data": digest({"checksum": data_checksum, "data_dim": data_dim}),
                   "code": code.fingerprint(code.stage_paths("train", registered))["sha256"]})


def evaluate_fingerprint(params: dict, name: str, train: dict) -> dict:
    """The fingerprint of an evaluation of a checkpoint with train fingerprint ``train``."""
    registered = P.registered_model(params, name)
    return _joint({"train": train["sha256"],
                   "settings": digest(P.evaluate_settings(params, name)),
                   "code": code.fingerprint(code.stage_paths("evaluate", registered))["sha256"]})


def mismatch(recorded: dict | None, expected: dict, parts=("params", "data")) -> list[str]:
    """The parts of ``expected`` whose digest ``recorded`` does not share (all when absent)."""
    if not recorded:
        return list(parts)
    return [p for p in parts if recorded.get(p) != expected.get(p)]


def describe(recorded: dict | None, expected: dict, name: str, limit: int = 3) -> str:
    """The first ``limit`` differing leaves of two :func:`train_params` dicts of run ``name``,
    as ``models.<name>.model.lr: 0.1 -> 0.05``."""
    if not recorded:
        return "no params recorded: trained by an older gm-bench"
    old, new = (dict(_leaves({f"models.{name}" if k == "settings" else k: v
                              for k, v in d.items()})) for d in (recorded, expected))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    shown = [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; {len(keys) - limit} more" if len(keys) > limit else "")


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def report_fingerprint(params: dict, data_checksums: dict[str, str]) -> dict:
    """The fingerprint of a report of ``params``: params, the code of every stage it ran, and
    the data checksums.  Recomputable from the tree (tests check the committed report)."""
    runs = sorted({name for _, name, _ in P.runs(params)})
    stages = {f"{stage}:{name}": code.fingerprint(
        code.stage_paths(stage, P.registered_model(params, name)))["sha256"]
        for name in runs for stage in ("train", "evaluate")}
    for stage in ("classifier", "report"):   # prepare's code is in the data checksums
        stages[stage] = code.fingerprint(code.stage_paths(stage))["sha256"]
    inputs = {k: v for k, v in params.items() if k != "resources"}   # scheduling hints only
    tuned = {f"{ds}/{name}": block for ds, name in sorted({(d, n) for d, n, _ in P.runs(params)})
             if (block := P.tuned_block(params, ds, name))}
    if tuned:   # the values of the tuned files the runs merged (params names only their folder)
        inputs["tuned_settings"] = tuned
    return _joint({"params": digest(inputs), "code": digest(stages),
                   "data": digest(dict(sorted(data_checksums.items())))})


def stale_stages(params: dict, run_dir) -> list[tuple[str, str]]:
    """(stage, run name) whose results on disk were made with other settings than ``params``
    give: a train.json or eval.json that records a different params/settings digest (e.g.
    written by ``dvc repro`` with another value).  Cheap: reads only those JSON files."""
    stale = set()
    for dataset, name, seed in P.runs(params):
        folder = Path(run_dir(dataset, name, seed))
        train = _read(folder / "train.json")
        if train is not None and train.get("params") != digest(
                train_params(params, dataset, name, seed)):
            stale.add(("train", name))
        ev = _read(folder / "eval.json")
        if ev is not None and ev.get("settings") != digest(P.evaluate_settings(params, name)):
            stale.add(("evaluate", name))
    return sorted(stale)


def request_rerun(stamp: Path, reason: str) -> None:
    """Make a stage's code fingerprint file ``stamp`` (its input in both runners) differ, so
    that the stage reruns: Snakemake compares the content of a newer input, not only its time."""
    if not stamp.exists():
        return                          # the code stage writes it, and the stage reruns anyway
    record = json.loads(stamp.read_text())
    record["rerun"] = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: {reason}"
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, stamp)


def _read(path: Path) -> dict | None:
    """The ``fingerprint`` recorded in a JSON result file, or None (absent or unreadable:
    the stages themselves report those)."""
    try:
        return json.loads(path.read_text()).get("fingerprint") or None
    except (OSError, ValueError, AttributeError):
        return None
