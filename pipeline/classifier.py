"""Stage classifier: the dataset's own label classifier (sample-metric embedding) and the
reference row of the sample metrics.

    python -m pipeline.classifier --dataset D

Writes results/D/classifier.pt (trained from scratch; ``{"n_classes": 0}`` when the dataset
has no labels) and results/D/reference.json: held-out real data (the validation split)
scored exactly like a model's samples, per data view, so every metric shows its floor.
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.classifier")

from pathlib import Path

import torch

from gm.data import load_splits
from gm.errors import CheckpointError
from gm.io import atomic_path, cause, describe, write_json
from gm.metrics import reference_metrics
from gm.metrics.classifier import Classifier, fit_dataset_classifier
from pipeline import common, params as P
from pipeline.common import log


def load_classifier(path: Path, device="cpu") -> Classifier | None:
    """The classifier of a dataset, or None for a dataset without labels.

    A missing, cut-off or foreign classifier.pt raises CheckpointError with one line:
    ``<file>: <problem> (<fix>)``, the fix being to rerun the classifier stage."""
    path = Path(path)
    rerun = common.rerun("classifier", path.parent.name)
    if not path.exists():
        raise CheckpointError(describe(path, "missing", f"run the classifier stage: {rerun}"))
    fix = f"delete it and rerun the classifier stage: {rerun}"
    try:  # weights_only: never runs pickled code; torch raises many types for a damaged file
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(describe(path, f"not a readable classifier checkpoint "
                                       f"({cause(err)})", fix)) from None
    if isinstance(state, dict) and state.get("n_classes") == 0:
        return None
    try:
        return Classifier.load(path, map_location=device)
    except CheckpointError as err:   # in the one-line form, with the error it wraps
        raise CheckpointError(describe(path, "not a gm-bench classifier checkpoint "
                                       f"({cause(err.__context__ or err)})", fix)) from None


def run(args, params) -> None:
    ds = args.dataset
    splits = load_splits(common.processed_path(ds))
    g = common.stage_generator(params, "classifier", ds)
    clf, info = fit_dataset_classifier(splits, generator=g)
    out = common.classifier_path(ds)
    if clf is None:
        with atomic_path(out) as tmp:
            torch.save({"n_classes": 0}, tmp)
    else:
        clf.save(out)
    cfg = P.evaluate_config(params)
    reference = {}
    for view_name, view in (("binary", splits.x), ("real", splits.r)):
        if not view or view["train"].ndim != 2:
            continue
        cap = cfg.metric_images or len(view["val"])     # the cap of pipeline/evaluate.py
        reference[view_name] = reference_metrics(
            view["val"][:cap], view["test"][:cfg.metric_images or None], view["train"], clf,
            generator=common.stage_seed(params, "reference", ds), n_boot=cfg.n_bootstrap)
    write_json(out.parent / "reference.json", {"dataset": ds, "classifier": info,
                                               "reference": reference})
    log.info("classifier of %s: %s", ds, info or "no labels")


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0],
                            writes=lambda a: [common.classifier_path(a.dataset).parent])


if __name__ == "__main__":
    common.process_main(main)
