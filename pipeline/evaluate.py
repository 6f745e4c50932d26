"""Stage evaluate: test log-likelihood with the model's own estimator, samples, metrics.

    python -m pipeline.evaluate --dataset D --model M --seed S

Reads results/D/M/seedS/{model.pt, train.json}; writes eval.json (a
:class:`pipeline.record.EvalRecord`, with the resolved ``evaluate:`` settings of run M under
``budget``), per_example.npz (:func:`pipeline.record.write_per_example`: the per-example test
values with their test-split positions, for paired comparisons) and samples.png there.  An
estimator whose cost is per test example (``GenerativeModel.per_example_cost``: RAISE,
importance sampling, decoder AIS) scores the first ``test_subset`` test examples when that
budget is set; the validation estimators always do.  The settings are
params.yaml ``evaluate:`` with ``models.M.evaluate:`` merged over it; the model sees them as a
:class:`gm.base.Budget` through its named hooks (``prepare_evaluation``, ``log_likelihood``,
``validation_estimates``, ``annealing_path``, ``exact_log_z``, ``extras``).
Their MLflow calls (metrics, tags, artifacts for the training stage's run) are deferred to the
run's pending file and sent by the report stage (see pipeline/tracking.py).
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.evaluate")

import math
import time

import torch

from gm.base import Budget, GenerativeModel
from gm.config import config_dict
from gm.data import load_splits
from gm.errors import CheckpointError
from gm.estimators.ais import ais_convergence
from gm.metrics import sample_metrics
from pipeline import checkpoint, common, figures, provenance, tracking
from pipeline.classifier import load_classifier
from pipeline import params as P
from pipeline.common import log
from pipeline.record import (AISConvergence, AISPoint, Bounds, Estimate, EvalRecord,
                             ExtrasRecord, Timing, Validation, sample_metrics_from,
                             write_per_example)


def ais_convergence_record(model: GenerativeModel, path, cfg: P.EvaluateConfig,
                           budget: Budget, generator: torch.Generator) -> AISConvergence:
    """AIS log Z of annealing ``path`` against the number of intermediate distributions, with
    the exact log Z when the model is small enough to enumerate (None otherwise)."""
    exact = model.exact_log_z(budget)
    points = ais_convergence(path, list(cfg.ais_convergence), cfg.ais_chains, cfg.ais_schedule,
                             generator)
    return AISConvergence(None if exact is None else float(exact),
                          tuple(AISPoint(**p) for p in points))


def check_provenance(path, state: dict, params: dict, ds: str, name: str, seed: int,
                     splits) -> dict:
    """The evaluation's fingerprint; CheckpointError (one line: which run, what differs, the
    fix) when the checkpoint was trained with other params or data than today's."""
    expected = provenance.train_fingerprint(params, ds, name, seed,
                                            data_checksum=splits.checksum(),
                                            data_dim=splits.data_dim)
    recorded = state["extra"].get("fingerprint")
    if bad := provenance.mismatch(recorded, expected):
        detail = provenance.describe(state["extra"].get("train_params"),
                                     provenance.train_params(params, ds, name, seed), name)
        what = " and ".join(bad) + (f" ({detail})" if detail and "params" in bad else "")
        raise CheckpointError(f"{path}: trained with other {what} than {ds}/{name} seed {seed} "
                              "has now; rerun its train stage (snakemake or dvc repro do)")
    return provenance.evaluate_fingerprint(params, name, recorded)


def run(args, params) -> None:
    ds, name, seed = args.dataset, args.model, args.seed
    device = common.device_of(params)
    out = common.run_dir(ds, name, seed)
    cfg = P.evaluate_config(params, name)       # evaluate: with models.<name>.evaluate: over it
    budget = cfg.budget()
    state = checkpoint.load_state(out / "model.pt", expect_model=P.registered_model(params, name))
    train_info = common.read_train_info(out / "train.json")
    splits = load_splits(common.processed_path(ds))
    clf = load_classifier(common.classifier_path(ds), device)  # before any work
    fingerprint = check_provenance(out / "model.pt", state, params, ds, name, seed, splits)
    model = checkpoint.restore(state, device, optimizers=False).eval()
    view = splits.view(model.input_kind)
    x_test = torch.as_tensor(view["test"], device=device)
    # one scope per fingerprint: a retried evaluation logs once, another budget or code anew
    tracker = tracking.RunLogger(out, ds, name, seed, create=False, defer=math.inf,
                                 scope="evaluate:" + fingerprint["sha256"])
    g = common.stage_generator(params, "evaluate", ds, name, seed, device)
    t0, cpu0 = time.perf_counter(), time.process_time()

    # e.g. a Parzen proxy chooses its width on validation data (a no-op for most models)
    model.prepare_evaluation(torch.as_tensor(view["val"], device=device), generator=g,
                             budget=budget)
    # estimators whose cost is per test example score a fixed subset: the first test_subset
    subset = x_test[:budget.test_subset] if budget.test_subset else x_test
    ll = model.log_likelihood(subset if model.per_example_cost(budget) else x_test,
                              generator=g, budget=budget)
    validation = model.validation_estimates(subset, generator=g, budget=budget)
    convergence = None                  # for the report's figure, when scored by AIS
    if cfg.ais_convergence and (path := model.annealing_path()) is not None:
        convergence = ais_convergence_record(model, path, cfg, budget, g)

    samples = model.sample(cfg.n_samples, generator=g).float().cpu()
    grid_n = min(100, samples.shape[0])
    figures.save_grid(out / "samples.png", samples[:grid_n].numpy(), splits.image_shape)
    extras = model.extras(x_test, generator=g, budget=budget,
                          classifier=clf.logits if clf is not None else None)
    for key, images in extras.images.items():
        figures.save_grid(out / f"extra_{key}.png", images.float().cpu().numpy(),
                          splits.image_shape, ncols=extras.grid_cols.get(key))
    metrics = {}
    if samples.ndim == 2 and view["test"].ndim == 2:  # as many samples as the reference row
        cap = cfg.metric_images or len(view["test"])
        n = min(samples.shape[0], len(view["val"]), cap)
        metrics = sample_metrics(samples[:n], view["test"][:cap], view["train"], clf,
                                 generator=common.stage_seed(params, "metrics", ds, name, seed),
                                 n_boot=cfg.n_bootstrap)
    settings = config_dict(cfg)
    record = EvalRecord(
        dataset=ds, model=name, seed=seed, data_view=model.input_kind,
        test_log_likelihood=Estimate.of(ll), n_parameters=model.n_parameters(),
        timing=Timing(train_info["train_seconds"], time.perf_counter() - t0),
        log_likelihood_bounds=Bounds.of(ll),
        estimator_validation={k: Validation.of(v, ll) for k, v in validation.items()},
        ais_convergence=convergence, extras=ExtrasRecord.of(extras),
        sample_metrics=sample_metrics_from(metrics), budget=settings, fingerprint=fingerprint,
        cost=common.process_cost(time.process_time() - cpu0))
    write_per_example(out / "per_example.npz", ll)
    record.write(out / "eval.json")

    flat = {"test_log_likelihood": ll.mean, "test_log_likelihood_stderr": ll.stderr,
            "eval_seconds": record.timing.eval_seconds}
    flat |= {f"extra_{k}": v for k, v in record.extras.metrics.items()}
    flat |= {f"sample_{k}": m.value for k, m in record.sample_metrics.items()}
    tracker.metrics(flat)
    # the budget as tags, not params: MLflow params are immutable, and a changed budget reruns
    # evaluation into the same run
    tracker.tags({"ll_method": ll.method, "ll_kind": ll.kind,
                  "gm.eval_fingerprint": fingerprint["sha256"]}
                 | {f"evaluate.{k}": v for k, v in settings.items()})
    for f in [out / "eval.json", out / "samples.png", *sorted(out.glob("extra_*.png"))]:
        tracker.artifact(f, "evaluation")
    tracker.finish()
    log.info("%s/%s seed %d: test log p(x) = %.3f +- %.3f nats (%s, %s)", ds, name, seed,
             ll.mean, ll.stderr, ll.method, ll.kind)


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0], model=True, seed=True)


if __name__ == "__main__":
    common.process_main(main)
