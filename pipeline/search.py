"""configs/search.yaml: the equal-budget hyperparameter search (issue 15), read and checked.

Every study of ``runs:`` gets the same number of ``trials`` and the same per-trial compute cap
``trial_cpu_seconds`` (Lucic et al. 2018: comparisons without an equal search budget mostly
measure the search).  A model's space names fields of its ``train:`` and ``model:`` blocks;
what a space leaves out keeps its params.yaml value.  Problems raise one ConfigError naming
``configs/search.yaml: <field>``, before any trial starts.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gm.config import make_config, prefixed
from gm.errors import ConfigError
from gm.registry import model_class
from pipeline import params as P

SEARCH = Path("configs/search.yaml")
TOP_KEYS = {"runs", "trials", "workers", "trial_cpu_seconds", "seed", "startup_trials",
            "storage", "budget", "sample_objective", "models"}
OBJECTIVES = ("likelihood", "samples")
DEFAULT_STORAGE = "sqlite:///results/tune/{dataset}/{model}/optuna.db"   # one file per study


def search_path() -> Path:
    """configs/search.yaml, or ``$GM_SEARCH`` (tests, other experiments)."""
    return Path(os.environ.get("GM_SEARCH") or SEARCH)


def load(params: dict, path: Path | None = None) -> dict:
    """The search settings, validated against ``params`` (each listed run has a space, and a
    space of a model that params defines names fields that exist, with valid ends)."""
    path = Path(path or search_path())
    search = P.read_yaml(path)
    where = str(path)
    if not isinstance(search, dict):
        raise ConfigError(where, "expected a mapping (see configs/search.yaml)")
    for key in search:
        P.require(key in TOP_KEYS, f"{where}: {key}",
                  "unknown key (known: " + ", ".join(sorted(TOP_KEYS)) + ")")
    for key in ("runs", "trials", "workers", "trial_cpu_seconds", "models"):
        P.require(key in search, f"{where}: {key}", "missing")
    for key, least in (("trials", 1), ("seed", 0), ("startup_trials", 0)):
        v = search.get(key, 0)
        P.require(P.is_int(v) and v >= least, f"{where}: {key}",
                  f"must be an integer >= {least}, got {v!r}")
    workers = search["workers"]
    P.require(isinstance(workers, list) and workers and all(P.is_int(w) and w >= 0 for w in workers)
              and len(set(workers)) == len(workers), f"{where}: workers",
              f"must be a list of distinct worker indices, e.g. [0] or [0, 1, 2, 3], got {workers!r}")
    cap = search["trial_cpu_seconds"]
    P.require(isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0,
              f"{where}: trial_cpu_seconds", f"must be a number > 0, got {cap!r}")
    storage = search.get("storage")
    P.require(storage is None or (isinstance(storage, str) and "://" in storage),
              f"{where}: storage", f"must be null or a database URL, got {storage!r}")
    budget = P.mapping(search.get("budget"), f"{where}: budget")
    try:
        make_config(P.EvaluateConfig, P.evaluate_settings(params) | budget)
    except ConfigError as err:
        raise prefixed(err, f"{where}: budget") from None
    models = P.mapping(search["models"], f"{where}: models")
    P.require(isinstance(search["runs"], list), f"{where}: runs",
              "must be a list of {dataset: D, model: M}")
    for i, run in enumerate(search["runs"]):
        at = f"{where}: runs[{i}]"
        P.require(isinstance(run, dict) and set(run) == {"dataset", "model"}, at,
                  f"must be {{dataset: D, model: M}}, got {run!r}")
        P.require(run["model"] in models, at, f"{run['model']!r} has no space under models:")
    for name, space in models.items():
        _check_space(params, search, name, P.mapping(space, f"{where}: models.{name}"),
                     f"{where}: models.{name}")
    return search


def tune_runs(params: dict, search: dict) -> list[tuple[str, str]]:
    """The studies to run: search.yaml ``runs:`` that params also runs (a profile with other
    runs, e.g. configs/fashion.yaml, tunes none of the default's), in search.yaml order."""
    runs = {(r["dataset"], r["model"]) for r in params["runs"]}
    return [(r["dataset"], r["model"]) for r in search["runs"]
            if (r["dataset"], r["model"]) in runs]


def _check_space(params: dict, search: dict, name: str, space: dict, where: str) -> None:
    for key in space:
        P.require(key in ("objective", "train", "model", "budget"), f"{where}.{key}",
                  "unknown key (known: budget, model, objective, train)")
    P.require(space.get("objective") in OBJECTIVES, f"{where}.objective",
              f"must be one of {', '.join(OBJECTIVES)}, got {space.get('objective')!r}")
    if name not in params["models"]:
        return   # a space for a model this params file does not run: checked when it does
    P.mapping(space.get("budget"), f"{where}.budget")
    try:
        make_config(P.EvaluateConfig, P.evaluate_settings(params, name)
                    | objective_budget(search, name))
    except ConfigError as err:
        raise prefixed(err, f"{where}.budget") from None
    for field in P.mapping(space.get("train"), f"{where}.train"):
        P.require(field in P.TRAIN_KEYS, f"{where}.train.{field}",
                  "unknown key (known: " + ", ".join(sorted(P.TRAIN_KEYS)) + ")")
    block = params["models"][name].get("model") or {}
    cls = model_class(P.registered_model(params, name))
    for part in ("train", "model"):
        for field, spec in P.mapping(space.get(part), f"{where}.{part}").items():
            values = _extremes(spec, f"{where}.{part}.{field}")
            if part == "model":
                for v in values:
                    try:
                        make_config(cls.Config, block | {field: v})
                    except ConfigError as err:
                        raise prefixed(err, f"{where}.model") from None
            else:
                for v in values:
                    P.require(P.is_int(v) and v >= 1, f"{where}.train.{field}",
                              f"must hold positive integers, got {v!r}")


def _extremes(spec, where: str) -> list:
    """The values a space entry can take at its ends (every choice), checked for form."""
    if isinstance(spec, list):
        P.require(len(spec) == 2 and all(_number(v) for v in spec) and spec[0] <= spec[1], where,
                  f"a range is [low, high] with low <= high, got {spec!r}")
        return list(spec)
    if isinstance(spec, dict) and "choices" in spec:
        P.require(set(spec) == {"choices"} and isinstance(spec["choices"], list)
                  and spec["choices"], where, "write {choices: [a, b, ...]}")
        return list(spec["choices"])
    P.require(isinstance(spec, dict) and {"low", "high"} <= set(spec) <= {"low", "high", "log"}
              and _number(spec["low"]) and _number(spec["high"]) and spec["low"] <= spec["high"],
              where, f"write [low, high], {{low: a, high: b, log: true}} or {{choices: [...]}}, "
              f"got {spec!r}")
    P.require(not spec.get("log") or spec["low"] > 0, where, "a log range needs low > 0")
    return [spec["low"], spec["high"]]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def suggest(trial, space: dict) -> dict:
    """``{"train": {...}, "model": {...}}`` of one Optuna trial drawn from ``space``; Optuna
    parameter names are ``train.<field>`` / ``model.<field>`` (list choices travel as JSON)."""
    out: dict = {"train": {}, "model": {}}
    for part in ("train", "model"):
        for field, spec in (space.get(part) or {}).items():
            name = f"{part}.{field}"
            if isinstance(spec, dict) and "choices" in spec:
                encoded = [json.dumps(c) for c in spec["choices"]]
                out[part][field] = json.loads(trial.suggest_categorical(name, encoded))
                continue
            low, high, log = ((spec[0], spec[1], False) if isinstance(spec, list)
                              else (spec["low"], spec["high"], bool(spec.get("log"))))
            if P.is_int(low) and P.is_int(high):
                out[part][field] = trial.suggest_int(name, low, high, log=log)
            else:
                out[part][field] = trial.suggest_float(name, float(low), float(high), log=log)
    return out


def decode(values: dict) -> dict:
    """Optuna's ``trial.params`` (``train.x`` / ``model.y``, JSON-encoded choices) as
    ``{"train": {...}, "model": {...}}``."""
    out: dict = {"train": {}, "model": {}}
    for name, v in values.items():
        part, field = name.split(".", 1)
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[part][field] = v
    return out


def objective_budget(search: dict, name: str) -> dict:
    """The estimator budget of model ``name``'s objective: search.yaml ``budget:``, with the
    model's own ``budget:`` (e.g. more draws of a noisy bound) merged over it."""
    own = search["models"][name].get("budget") or {}
    return (search.get("budget") or {}) | own


def study_settings(params: dict, search: dict, dataset: str, name: str) -> dict:
    """Everything a study's trials depend on besides code and data: the base settings (the
    untuned params.yaml block), the space, the trial budget, cap, seed and objective budget."""
    block = params["models"][name]
    return {"dataset": dataset, "model": name, "base": P.registered_model(params, name),
            "train": block.get("train") or {}, "model_block": block.get("model") or {},
            "space": search["models"][name], "trials": search["trials"],
            "trial_cpu_seconds": search["trial_cpu_seconds"], "seed": search.get("seed", 0),
            "startup_trials": search.get("startup_trials", 0), "root_seed": params["seed"],
            "budget": objective_budget(search, name),
            "evaluate": P.evaluate_settings(params, name),
            "sample_objective": search.get("sample_objective") or {}}


def study_name(settings: dict) -> str:
    """``<dataset>/<model>/<12 hex>``: another space, budget or base starts another study."""
    digest = hashlib.sha256(P.canonical(settings).encode()).hexdigest()[:12]
    return f"{settings['dataset']}/{settings['model']}/{digest}"


def storage_url(search: dict, dataset: str, name: str) -> str:
    """``$GM_OPTUNA_STORAGE``, else search.yaml ``storage``, else one SQLite file per study
    under results/tune/ (the SLURM profile points both runners at the cluster's PostgreSQL)."""
    url = os.environ.get("GM_OPTUNA_STORAGE") or search.get("storage") or DEFAULT_STORAGE
    return url.format(dataset=dataset, model=name)


def redacted(url: str) -> str:
    """``url`` without a password (it is written into committed files)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url
