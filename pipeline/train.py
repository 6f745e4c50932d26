"""Stage train: fit one model on one dataset with one seed.

    python -m pipeline.train --dataset D --model M --seed S

Writes results/D/M/seedS/{model.pt, train.json}; checkpoints every
``train.checkpoint_every`` epochs to ``checkpoint.pt`` and resumes from it when rerun after a
crash; logs to MLflow (pipeline/tracking.py) the resolved model config (every field, defaults
included), the train settings, seeds and data checksum as params, and per-epoch metrics at their
epoch step, live once training has run for GM_MLFLOW_DEFER_SECONDS (60 s), the calls of a
shorter training kept in the run's journal for the report stage to send.  The MLflow run's uid
travels in the checkpoint: a resume continues the same run and logs each epoch once.
``mlflow_run_id`` in train.json is null when the calls were kept.
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.train")

import json
import math
import time
from pathlib import Path

import torch

import gm
from gm.config import config_dict, prefixed
from gm.data import load_splits
from gm.errors import ConfigError, DivergenceError
from gm.io import write_json
from gm.progress import progress
from gm.ops import bernoulli
from pipeline import checkpoint, common, provenance, tracking
from pipeline import params as P
from pipeline.common import log


def minibatches(x: torch.Tensor, batch_size: int, generator: torch.Generator,
                gather: int = 64):
    """Shuffled minibatches of x (n, ...) along the first axis; the last one may be smaller.
    Gathered ``gather`` batches at a time (one indexing operation for many batches)."""
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device)
    for idx in perm.split(batch_size * gather):
        yield from x[idx].split(batch_size)


def train_model(model: gm.GenerativeModel, x: torch.Tensor, *, epochs: int, batch_size: int,
                generator: torch.Generator, dynamic_binarization: bool = False,
                start_epoch: int = 0, on_epoch=None, name: str | None = None) -> list[dict]:
    """Run epochs [start_epoch, epochs); ``on_epoch(epoch, metrics)`` after each one.

    Returns the per-epoch history (means of fit_step's diagnostics plus end_epoch's).
    Raises DivergenceError naming the model (``name``: its params.yaml name, default
    ``model.name``) and epoch on a non-finite metric or parameter.
    """
    name = name or model.name
    history = []
    for epoch in progress(range(start_epoch, epochs), desc=f"train {model.name}",
                          total=epochs - start_epoch):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        model.train()
        for xb in minibatches(x, batch_size, generator):
            if dynamic_binarization:
                xb = bernoulli(xb, generator)
            for k, v in model.fit_step(xb, generator=generator).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        metrics = {k: v / n for k, v in sums.items()}
        metrics |= model.end_epoch(epoch)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad or not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergenceError(f"model {name!r} diverged at epoch {epoch + 1}: "
                                  f"non-finite {', '.join(bad) or 'parameters'}; lower the "
                                  f"learning rate in params.yaml models.{name}.model")
        metrics["epoch"] = epoch + 1
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics)
    return history


def build_model(registered: str, name: str, data_dim: int, hparams: dict) -> gm.GenerativeModel:
    """``gm.build`` of run ``name``; a config error (gm names only the field, e.g. one that
    depends on the data's size) is given the params.yaml path ``models.<name>.model``."""
    try:
        return gm.build(registered, data_dim, **hparams)
    except ConfigError as err:
        raise prefixed(err, f"models.{name}.model") from None


def run_params(model: gm.GenerativeModel, block: dict, params: dict, seed: int, dataset: str,
               splits, registered: str) -> dict:
    """The MLflow params of a training run: every field of the resolved model config (defaults
    included) under ``model.model``, the train settings under ``model.train``, the seeds, and
    the data it saw (dataset, view, checksum of the prepared arrays)."""
    return {"model": {"registered": registered, "train": dict(block["train"]),
                      "model": config_dict(model.config)},
            "seed": seed, "root_seed": params["seed"],
            "data": {"dataset": dataset, "view": model.input_kind,
                     "binarization": splits.binarization, "checksum": splits.checksum()}}


def code_fingerprint(name: str) -> dict[str, str]:
    """The train stage's code hash for run ``name`` (pipeline/code.py), when it was written."""
    path = Path("results/code") / f"{name}.train.json"
    try:
        return {"gm.code.train": json.loads(path.read_text())["sha256"]}
    except (OSError, ValueError, KeyError):
        return {}


def run(args, params) -> None:
    started = int(time.time() * 1000)           # the MLflow run's real start time
    ds, name, seed = args.dataset, args.model, args.seed
    block = P.train_settings(params, name, ds)      # base, train, model (tuned): never evaluate
    registered = P.registered_model(params, name)   # a variant's base, else name
    device = common.device_of(params)
    out = common.run_dir(ds, name, seed)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(common.processed_path(ds))
    epochs, batch_size = block["train"]["epochs"], block["train"]["batch_size"]
    every = block["train"].get("checkpoint_every", 0)

    torch.manual_seed(common.stage_seed(params, "init", ds, name, seed))
    model = build_model(registered, name, splits.data_dim, block["model"]).to(device)
    x = torch.as_tensor(splits.view(model.input_kind)["train"], device=device)
    dynamic = splits.binarization == "dynamic" and model.input_kind == "binary"
    g = common.stage_generator(params, "train", ds, name, seed, device)
    ckpt_path, start, history, elapsed, run_uid = out / "checkpoint.pt", 0, [], 0.0, None
    phash = tracking.params_hash({"model": block, "seed": params["seed"], "data": ds})
    fingerprint = provenance.train_fingerprint(params, ds, name, seed,
                                               data_checksum=splits.checksum(),
                                               data_dim=splits.data_dim)
    if ckpt_path.exists():
        state = checkpoint.load_state(ckpt_path, expect_model=registered)
        if (state["extra"].get("fingerprint") or {}).get("sha256") != fingerprint["sha256"]:
            log.info("%s was made with other params, data or code: training afresh", ckpt_path)
        elif state["extra"].get("params_hash") == phash:
            model = checkpoint.restore(state, device)
            g.set_state(state["extra"]["generator"])
            start, history = state["epoch"], state["extra"]["history"]
            elapsed = state["extra"]["train_seconds"]
            run_uid = state["extra"].get("mlflow_run_uid")
            log.info("resuming %s from its checkpoint after epoch %d", out, start)
    tracker = tracking.RunLogger(
        out, ds, name, seed, params=run_params(model, block, params, seed, ds, splits, registered),
        tags={"gm.params_hash": phash, "git_commit": tracking.git_commit(),
              "device": str(device), "gm.fingerprint": fingerprint["sha256"]}
        | code_fingerprint(name),
        defer=tracking.DEFER_SECONDS, run_uid=run_uid, scope="train", start_time=started)
    if start and run_uid is None:   # a checkpoint from before runs had uids: a new run gets all
        for h in history:
            tracker.metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
    t0, cpu0 = time.perf_counter(), time.process_time()

    def on_epoch(epoch, metrics):
        tracker.metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        history.append(metrics)
        if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
            tracker.flush()  # every epoch up to the checkpoint is journaled (or in the store)
            checkpoint.save(ckpt_path, model, epoch=epoch + 1, extra={
                "params_hash": phash, "fingerprint": fingerprint,
                "generator": g.get_state(), "history": history,
                "train_seconds": elapsed + time.perf_counter() - t0,
                "mlflow_run_uid": tracker.uid})

    failed = out / "failed.json"
    failed.unlink(missing_ok=True)
    try:
        train_model(model, x, epochs=epochs, batch_size=batch_size, generator=g,
                    dynamic_binarization=dynamic, start_epoch=start, on_epoch=on_epoch,
                    name=name)
    except DivergenceError as err:  # the report marks the run failed; the stage fails loudly
        write_json(failed, {"dataset": ds, "model": name, "seed": seed, "error": str(err)})
        tracker.tags({"gm.error": str(err)[:500]})
        tracker.finish("FAILED")
        raise
    seconds = elapsed + time.perf_counter() - t0
    checkpoint.save(out / "model.pt", model, epoch=epochs, extra={
        "params_hash": phash, "fingerprint": fingerprint,
        "train_params": provenance.train_params(params, ds, name, seed)})
    write_json(out / "train.json", {
        "dataset": ds, "model": name, "seed": seed, "epochs": epochs, "batch_size": batch_size,
        "train_seconds": seconds, "n_parameters": model.n_parameters(), "device": str(device),
        "resumed_from_epoch": start, "history": history, "mlflow_run_id": tracker.run_id,
        "mlflow_run_uid": tracker.uid, "fingerprint": fingerprint,
        "cost": common.process_cost(time.process_time() - cpu0)})
    tracker.metrics({"train_seconds": seconds})
    tracker.artifact(out / "model.pt", "checkpoint")
    tracker.finish()     # training's end time; evaluation later moves it to its own end
    ckpt_path.unlink(missing_ok=True)
    log.info("trained %s/%s seed %d in %.1f s", ds, name, seed, seconds)


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0], model=True, seed=True,
                            memory=True)


if __name__ == "__main__":
    common.process_main(main)
