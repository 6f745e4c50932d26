"""Stage evaluate: test log-likelihood with the model's own estimator, samples, metrics.

    python -m pipeline.evaluate --dataset D --model M --seed S

Reads results/D/M/seedS/{model.pt, train.json}; writes eval.json and samples.png there.
Their MLflow calls (metrics, tags, artifacts for the training stage's run) are deferred to the
run's pending file and sent by the report stage (see pipeline/tracking.py).
"""
from __future__ import annotations

import json
import math
import sys
import time

import torch

from gm.base import LogLikelihood
from gm.data import load_splits
from gm.errors import ConfigError
from gm.estimators.ais import ais_convergence
from gm.io import write_json
from gm.metrics import sample_metrics
from pipeline import checkpoint, common, figures, tracking
from pipeline.classifier import load_classifier
from pipeline import params as P
from pipeline.common import log


def summarize(ll: LogLikelihood) -> dict:
    """The eval.json record of one estimate: mean, stderr, method, kind, n, info."""
    out = {"mean": ll.mean, "stderr": ll.stderr, "method": ll.method, "kind": ll.kind,
           "n": int(ll.values.numel())}
    if ll.info:
        out["info"] = {k: float(v) for k, v in ll.info.items()}
    return out


def bounds_record(ll: LogLikelihood) -> dict | None:
    """{"lower": {...}, "upper": {...}, "gap": upper - lower} when the estimator gives both."""
    if not {"lower", "upper"} <= set(ll.bounds):
        return None
    rec = {}
    for side in ("lower", "upper"):
        v = ll.bounds[side]
        rec[side] = {"mean": float(v.mean()),
                     "stderr": float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0}
    rec["gap"] = rec["upper"]["mean"] - rec["lower"]["mean"]
    return rec


def ais_convergence_record(model, cfg, generator) -> dict:
    """AIS log Z against the number of intermediate distributions, with the exact log Z
    when the model is small enough to enumerate (None otherwise)."""
    try:
        exact = float(model.log_z_exact(cfg.exact_max_bits))
    except (ConfigError, AttributeError, TypeError):
        exact = None
    points = ais_convergence(model.annealing_path(), list(cfg.ais_convergence),
                             cfg.ais_chains, cfg.ais_schedule, generator)
    return {"exact_log_z": exact, "points": points}


def run(args, params) -> None:
    ds, name, seed = args.dataset, args.model, args.seed
    device = common.device_of(params)
    out = common.run_dir(ds, name, seed)
    cfg = P.evaluate_config(params)
    budget = cfg.budget()
    state = checkpoint.load_state(out / "model.pt", expect_model=P.registered_model(params, name))
    model = checkpoint.restore(state, device, optimizers=False).eval()
    train_info = json.loads((out / "train.json").read_text())
    splits = load_splits(common.processed_path(ds))
    view = splits.view(model.input_kind)
    x_test = torch.as_tensor(view["test"], device=device)
    tracker = tracking.RunLogger(out, ds, name, seed, create=False, defer=math.inf)
    g = common.stage_generator(params, "evaluate", ds, name, seed, device)
    t0 = time.perf_counter()

    if hasattr(model, "fit_bandwidth"):  # Parzen proxy: sigma chosen on validation data
        model.fit_bandwidth(torch.as_tensor(view["val"], device=device), generator=g,
                            budget=budget)
    ll = model.log_likelihood(x_test, generator=g, budget=budget)
    record = {"dataset": ds, "model": name, "seed": seed, "data_view": model.input_kind,
              "test_log_likelihood": summarize(ll),
              "train_seconds": train_info["train_seconds"],
              "n_parameters": model.n_parameters()}
    if (b := bounds_record(ll)) is not None:
        record["log_likelihood_bounds"] = b
    validation = model.validation_estimates(x_test, generator=g, budget=budget)
    if validation:
        record["estimator_validation"] = {
            k: summarize(v) | {"reference_method": ll.method, "reference_kind": ll.kind,
                               "difference": v.mean - ll.mean}
            for k, v in validation.items()}

    if hasattr(model, "annealing_path") and cfg.ais_convergence:
        record["ais_convergence"] = ais_convergence_record(model, cfg, g)

    samples = model.sample(cfg.n_samples, generator=g).float().cpu()
    grid_n = min(100, samples.shape[0])
    figures.save_grid(out / "samples.png", samples[:grid_n].numpy(), splits.image_shape)
    clf = load_classifier(common.classifier_path(ds), device)
    extras = model.extras(x_test, generator=g, budget=budget,
                          classifier=clf.logits if clf is not None else None)
    for key, images in extras.images.items():
        figures.save_grid(out / f"extra_{key}.png", images.float().cpu().numpy(),
                          splits.image_shape, ncols=extras.grid_cols.get(key))
    record["extras"] = {"metrics": {k: float(v) for k, v in extras.metrics.items()},
                        "tables": extras.tables, "images": sorted(extras.images)}
    record["sample_metrics"] = {}
    if samples.ndim == 2 and view["test"].ndim == 2:  # as many samples as the reference row
        n = min(samples.shape[0], len(view["val"]))
        record["sample_metrics"] = sample_metrics(
            samples[:n], view["test"], view["train"], clf,
            generator=common.stage_seed(params, "metrics", ds, name, seed),
            n_boot=cfg.n_bootstrap)
    record["eval_seconds"] = time.perf_counter() - t0
    write_json(out / "eval.json", record)

    flat = {"test_log_likelihood": ll.mean, "test_log_likelihood_stderr": ll.stderr,
            "eval_seconds": record["eval_seconds"]}
    flat |= {f"extra_{k}": v for k, v in record["extras"]["metrics"].items()}
    flat |= {f"sample_{k}": v["value"] for k, v in record.get("sample_metrics", {}).items()}
    tracker.metrics(flat)
    tracker.tags({"ll_method": ll.method, "ll_kind": ll.kind})
    for f in [out / "eval.json", out / "samples.png", *sorted(out.glob("extra_*.png"))]:
        tracker.artifact(f, "evaluation")
    tracker.finish()
    log.info("%s/%s seed %d: test log p(x) = %.3f +- %.3f nats (%s, %s)", ds, name, seed,
             ll.mean, ll.stderr, ll.method, ll.kind)


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0], model=True, seed=True)


if __name__ == "__main__":
    sys.exit(main())
