"""Stage tune: an equal-budget hyperparameter search of one (dataset, model) run (issue 15).

    python -m pipeline.tune --dataset D --model M --worker W   # one Optuna worker
    python -m pipeline.tune --dataset D --model M              # the study's result

Files: the study's storage (a SQLite file per study by default) and its MLflow journals under
results/tune/D/M/; its committed records, the stages' declared outputs:
configs/studies/D/M/workers/worker<W>.json (which trials a worker ran) and
configs/studies/D/M/study.json (every trial).  The tuned file (<tuned>/D/M.yaml) is a params
file like params.yaml, read by the default run's stages, not a declared output: declaring it
would make the default pipeline depend on the tune stages.

A worker runs trials of the study ``D/M/<digest of its settings>`` (pipeline/search.py) until the
study holds ``trials`` counted trials; several workers (search.yaml ``workers:``, one SLURM job
each) share one Optuna RDB storage: a SQLite file per study by default, the cluster's PostgreSQL
with ``GM_OPTUNA_STORAGE``.  Optuna's TPE sampler is seeded (seed + worker): one worker proposes
the same trials as long as it sees the same values, but a trial stopped by the CPU cap trains a
load-dependent number of epochs, so a search repeats only on an equally loaded machine; several
workers give an order that depends on timing.  Trial n trains on the
train split with seeds derived from (root seed, "tune", D, M, n) and stops at the first epoch end
past ``trial_cpu_seconds`` of CPU; the value is measured on the validation split only:

- ``likelihood``: the model's own estimator (``log_likelihood``) at search.yaml ``budget:``
  (cheaper than the evaluate stage's), mean nats per validation image;
- ``samples``: F = 2PR / (P + R) of precision P and recall R (Kynkaanniemi et al. 2019) of
  ``n`` samples against the validation images on the classifier's features, minus the
  collapse penalty: the fraction of samples whose nearest other sample is closer than half
  the median nearest-neighbour distance of the validation images.

A trial that diverges counts as failed (it spent its share of the budget); one killed with its
worker is retried.  The result step writes study.json (every trial) and the
tuned configuration configs/tuned/D/M.yaml that params ``tuned:`` merges over models.M for D's
runs: the best trial's values, its epochs being those it actually trained.  Every trial is an
MLflow run (experiment ``<D>-tune``) nested under the study's run.
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.tune")

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from gm.config import make_config
from gm.data import load_splits
from gm.errors import ConfigError, DivergenceError
from gm.io import write_json
from pipeline import common, search, tracking
from pipeline import params as P
from pipeline.common import log
from pipeline.train import build_model, train_model

OUT = Path("results/tune")
STUDIES = Path("configs/studies")


class _CapReached(Exception):
    """Raised after the epoch that crossed the per-trial CPU cap."""


def work_dir(dataset: str, name: str) -> Path:
    """results/tune/D/M: the study's working files (SQLite storage, MLflow journals)."""
    return OUT / dataset / name


def record_dir(dataset: str, name: str) -> Path:
    """configs/studies/D/M: the committed study.json and workers/ records, the tune stages'
    declared outputs (outside results/ and the tuned folder, which default stages read: no
    stage of the default run depends on a tune stage)."""
    return STUDIES / dataset / name


@contextlib.contextmanager
def schema_lock(url: str):
    """Hold the storage's lock while a worker creates or opens a study: Optuna creates its
    tables with check-then-create, so two workers starting at once on an empty database
    collide (``relation "studies" already exists``).  SQLite: a file lock beside the file;
    PostgreSQL: a session-level advisory lock (the others wait until the holder is done);
    any other backend: no lock (open_study retries a collision)."""
    if url.startswith("sqlite:///"):
        from filelock import FileLock
        db = Path(url[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock"):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                             {"k": SCHEMA_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


# pg_advisory_lock's 64-bit key: the first 8 bytes of sha256("gm-bench.optuna-schema").
SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"gm-bench.optuna-schema").digest()[:8],
                                 "big", signed=True)


def _concurrent_creation(err: Exception) -> bool:
    """Whether ``err`` is a collision with another worker creating the same schema or study."""
    text = type(err).__name__ + str(err)
    return "IntegrityError" in text or "already exists" in text


def open_study(settings: dict, url: str, *, worker: int = 0):
    """The Optuna study of ``settings`` in storage ``url`` (created if new), maximising.
    Workers starting at once create the schema and the study one at a time (schema_lock)."""
    import warnings
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("sqlite:///"):
        kwargs = {"connect_args": {"timeout": 120}}   # workers wait for the file lock
    else:
        kwargs = {"pool_pre_ping": True}
    sampler = optuna.samplers.TPESampler(seed=settings["seed"] + worker,
                                         n_startup_trials=settings["startup_trials"])
    for attempt in range(5):   # backends without a lock: a collision is retried
        try:
            with schema_lock(url):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                     heartbeat_interval=30, grace_period=120)
                return optuna.create_study(study_name=search.study_name(settings),
                                           storage=storage, sampler=sampler,
                                           direction="maximize", load_if_exists=True)
        except Exception as err:  # noqa: BLE001 - a concurrent creation, on lockless backends
            if attempt == 4 or not _concurrent_creation(err):
                raise
            time.sleep(1 + attempt)


def counted(study) -> list:
    """The trials that spend the budget: finished ones and failures of their own (divergence),
    in trial order; trials killed with their worker and over-budget asks do not count."""
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and t.user_attrs.get("gm.counted"))]


def running(study) -> list:
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]


def duplicate_fraction(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of ``samples`` (n, d) whose nearest other sample is closer than half the
    median nearest-neighbour distance within ``reference`` (m, d): the collapse penalty."""
    def nearest(x):
        d = torch.cdist(x.double(), x.double())
        d.fill_diagonal_(math.inf)
        return d.min(dim=1).values
    tol = 0.5 * nearest(reference).median()
    return float((nearest(samples) < tol).double().mean())


def objective_value(model, objective: str, view, cfg: P.EvaluateConfig, clf, g, seed: int,
                    sample_objective: dict) -> tuple[float, dict]:
    """(value to maximise, details) of a trained model on the validation split only."""
    x_val = torch.as_tensor(view["val"], device=g.device)
    if objective == "likelihood":
        ll = model.log_likelihood(x_val, generator=g, budget=cfg.budget())
        return float(ll.mean), {"method": ll.method, "kind": ll.kind,
                                "stderr": float(ll.stderr)}
    from gm.metrics import sample_metrics
    n = min(int(sample_objective.get("n_samples", len(view["val"]))), len(view["val"]))
    samples = model.sample(n, generator=g).float().cpu().reshape(n, -1)
    val = torch.as_tensor(view["val"]).float().reshape(len(view["val"]), -1)
    m = sample_metrics(samples, val[:n], torch.as_tensor(view["train"]), clf, generator=seed,
                       n_boot=int(sample_objective.get("n_bootstrap", 10)))
    p, r = m["precision"]["value"], m["recall"]["value"]
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    dup = duplicate_fraction(samples, val)
    details = {"precision": p, "recall": r, "f": f, "duplicates": dup,
               "fid": (m.get("fid") or {}).get("value")}
    return f - dup, details


def run_trial(trial, settings: dict, params: dict, splits, clf, device, study_run) -> float:
    """Train and score one trial; user attributes record what it did and cost."""
    ds, name = settings["dataset"], settings["model"]
    drawn = search.suggest(trial, settings["space"])
    train = settings["train"] | drawn["train"]
    hparams = settings["model_block"] | drawn["model"]
    cpu0 = time.process_time()
    run_dir = work_dir(ds, name) / f"trial{trial.number}"
    logger = tracking.RunLogger(
        run_dir, f"{ds}-tune", f"{name}.trial{trial.number}", 0,
        params={"train": train, "model": hparams, "trial": trial.number},
        tags={"gm.study": search.study_name(settings), "git_commit": tracking.git_commit()}
        | ({"mlflow.parentRunId": study_run.run_id} if study_run and study_run.run_id else {}),
        defer=0)
    try:
        torch.manual_seed(common.stage_seed(params, "tune-init", ds, name, trial.number))
        model = build_model(settings["base"], name, splits.data_dim, hparams).to(device)
        view = splits.view(model.input_kind)
        x = torch.as_tensor(view["train"], device=device)
        g = common.stage_generator(params, "tune", ds, name, trial.number, device)
        done = []

        def on_epoch(epoch, metrics):
            done.append(epoch + 1)
            logger.metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            if time.process_time() - cpu0 > settings["trial_cpu_seconds"]:
                raise _CapReached

        dynamic = splits.binarization == "dynamic" and model.input_kind == "binary"
        try:
            train_model(model, x, epochs=train["epochs"], batch_size=train["batch_size"],
                        generator=g, dynamic_binarization=dynamic, on_epoch=on_epoch, name=name)
        except _CapReached:
            pass
        train_cpu = time.process_time() - cpu0
        model.eval()
        cfg = make_config(P.EvaluateConfig, settings["evaluate"] | settings["budget"])
        space = settings["space"]
        value, details = objective_value(model, space["objective"], view, cfg, clf, g,
                                         common.stage_seed(params, "tune-metrics", ds, name,
                                                           trial.number),
                                         settings["sample_objective"])
    except DivergenceError as err:   # its own failure: it spent its share of the budget
        trial.set_user_attr("gm.counted", True)
        trial.set_user_attr("gm.error", str(err))
        trial.set_user_attr("gm.cpu_seconds", time.process_time() - cpu0)
        logger.tags({"gm.error": str(err)[:500]})
        logger.finish("FAILED")
        raise
    epochs = done[-1] if done else 0
    cost = time.process_time() - cpu0
    for key, v in {"gm.epochs": epochs, "gm.train_cpu_seconds": train_cpu,
                   "gm.cpu_seconds": cost, "gm.details": details}.items():
        trial.set_user_attr(key, v)
    logger.metrics({"objective": value, "epochs_trained": epochs, "cpu_seconds": cost}
                   | {k: v for k, v in details.items() if isinstance(v, (int, float))})
    logger.finish()
    log.info("%s/%s trial %d: %.4f after %d epochs (%.0f s CPU) %s", ds, name, trial.number,
             value, epochs, cost, json.dumps(drawn))
    if not math.isfinite(value):
        trial.set_user_attr("gm.counted", True)
        raise DivergenceError(f"model {name!r}: non-finite validation objective {value}")
    return value


def study_logger(settings: dict, url: str):
    """The MLflow run of the whole study (the trials' parent), one per study name."""
    ds, name = settings["dataset"], settings["model"]
    uid = hashlib.sha256(search.study_name(settings).encode()).hexdigest()[:32]
    return tracking.RunLogger(
        work_dir(ds, name) / "study", f"{ds}-tune", f"{name}.study", 0, run_uid=uid,
        params={"space": json.dumps(settings["space"], sort_keys=True),
                "trials": settings["trials"], "trial_cpu_seconds": settings["trial_cpu_seconds"],
                "budget": json.dumps(settings["budget"], sort_keys=True)},
        tags={"gm.study": search.study_name(settings), "gm.storage": search.redacted(url),
              "git_commit": tracking.git_commit()}, defer=0)


def work(settings: dict, url: str, worker: int, params: dict) -> dict:
    """One worker: trials until the study holds ``trials`` counted ones."""
    import optuna
    from pipeline.classifier import load_classifier
    ds, name = settings["dataset"], settings["model"]
    device = common.device_of(params)
    splits = load_splits(common.processed_path(ds))
    clf = load_classifier(common.classifier_path(ds), device)
    study = open_study(settings, url, worker=worker)
    for t in running(study):   # this worker's trial when it was killed: retried, not counted
        if t.user_attrs.get("gm.worker") == worker:   # (one process per worker index)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)     # another's, once its heartbeat is stale
    study_run = study_logger(settings, url)
    mine, cpu0 = [], time.process_time()

    def objective(trial):
        before = [t for t in counted(study) + running(study) if t.number < trial.number]
        if len(before) >= settings["trials"]:       # another worker took the last one first
            trial.set_user_attr("gm.over_budget", True)
            raise optuna.TrialPruned
        mine.append(trial.number)
        trial.set_user_attr("gm.worker", worker)
        return run_trial(trial, settings, params, splits, clf, device, study_run)

    while len(counted(study)) < settings["trials"]:
        if len(counted(study)) + len(running(study)) >= settings["trials"]:
            time.sleep(10)                           # the rest run elsewhere (or went stale:
            optuna.storages.fail_stale_trials(study)  # a killed worker's, retried here)
            continue
        study.optimize(objective, n_trials=1, catch=(DivergenceError,))
    return {"dataset": ds, "model": name, "worker": worker, "study": search.study_name(settings),
            "trials": mine, "cpu_seconds": time.process_time() - cpu0}


def result(settings: dict, url: str) -> tuple[dict, dict]:
    """(study record, tuned block) of a finished study; ConfigError when it is short."""
    study = open_study(settings, url)
    trials = counted(study)[: settings["trials"]]
    if len(trials) < settings["trials"]:
        raise ConfigError(search.redacted(url), f"study {search.study_name(settings)} holds "
                          f"{len(trials)} of {settings['trials']} trials",
                          "run its tune workers (snakemake --cores 8 tune reruns them)")
    records, best, curve = [], None, []
    for t in trials:
        rec = {"number": t.number, "state": t.state.name, "value": t.value,
               "values": search.decode(t.params), "epochs": t.user_attrs.get("gm.epochs"),
               "cpu_seconds": round(t.user_attrs.get("gm.cpu_seconds") or 0.0, 2),
               "details": t.user_attrs.get("gm.details"), "error": t.user_attrs.get("gm.error")}
        records.append(rec)
        if t.value is not None and (best is None or t.value > best["value"]):
            best = rec
        curve.append(None if best is None else best["value"])
    if best is None:
        raise ConfigError(f"{settings['dataset']}/{settings['model']}",
                          "every trial of the study failed", "narrow its space in configs/search.yaml")
    train = dict(best["values"]["train"])
    if "epochs" in train or best["epochs"] is not None:
        train["epochs"] = best["epochs"]          # what the best trial actually trained
    block = {"train": train, "model": best["values"]["model"]}
    cost = sum(r["cpu_seconds"] for r in records)
    study_rec = {"name": search.study_name(settings), "storage": search.redacted(url),
                 "objective": settings["space"]["objective"], "trials": len(records),
                 "trial_cpu_seconds": settings["trial_cpu_seconds"],
                 "budget": settings["budget"], "best_trial": best["number"],
                 "best_value": best["value"], "best_details": best["details"],
                 "cpu_seconds": round(cost, 1), "best_so_far": curve,
                 "space": settings["space"], "git_commit": tracking.git_commit()}
    return {**study_rec, "records": records, "settings": settings}, block | {"study": study_rec}


def write_tuned(path: Path, block: dict, dataset: str, name: str) -> None:
    """The committed tuned file, atomically."""
    import yaml
    text = (f"# gm-bench tuned configuration of {dataset}/{name}: written by "
            f"`snakemake --cores 8 tune` (pipeline/tune.py) from configs/search.yaml.\n"
            f"# params.yaml tuned: merges train: and model: over models.{name} for the "
            f"{dataset} runs; study: how they were found (validation split only).\n"
            + yaml.safe_dump(block, sort_keys=False, default_flow_style=None, width=100))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(args, params) -> None:
    ds, name = args.dataset, args.model
    plan = search.load(params)
    if (ds, name) not in search.tune_runs(params, plan):
        raise ConfigError("--model", f"({ds}, {name}) is not a run of both params runs: and "
                          f"{search.search_path()} runs:")
    if args.worker is not None and args.worker not in plan["workers"]:
        raise ConfigError("--worker", f"{args.worker} is not listed in {search.search_path()} "
                          f"workers: {plan['workers']}")
    tuned = P.tuned_path(params, ds, name)   # checked before any trial: the result step writes it
    if tuned is None:
        raise ConfigError("tuned", "params sets no tuned: folder", "set tuned: configs/tuned")
    settings = search.study_settings(params, plan, ds, name)
    url = search.storage_url(plan, ds, name)
    out = record_dir(ds, name)
    if args.worker is not None:
        record = work(settings, url, args.worker, params)
        write_json(out / "workers" / f"worker{args.worker}.json", record)
        log.info("%s/%s worker %d ran trials %s", ds, name, args.worker, record["trials"])
        return
    record, block = result(settings, url)
    write_json(out / "study.json", record)
    write_tuned(tuned, block, ds, name)
    study_run = study_logger(settings, url)
    study_run.metrics({"best_value": record["best_value"], "cpu_seconds": record["cpu_seconds"]})
    study_run.finish()
    log.info("%s/%s: best trial %d of %d, validation %.4f; wrote %s", ds, name,
             record["best_trial"], record["trials"], record["best_value"], tuned)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--worker", type=int)
    known, rest = ap.parse_known_args(argv)

    def stage(args, params):
        args.worker = known.worker
        run(args, params)

    return common.run_stage(stage, rest, __doc__.splitlines()[0], model=True,
                            writes=lambda a: [OUT, STUDIES, P.tuned_dir(P.load(a.params)) or OUT])


if __name__ == "__main__":
    common.process_main(main)
