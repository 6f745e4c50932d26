"""Stage classifier: the dataset's own label classifier (sample-metric embedding) and the
reference row of the sample metrics.

    python -m pipeline.classifier --dataset D

Writes results/D/classifier.pt (trained from scratch; ``{"n_classes": 0}`` when the dataset
has no labels) and results/D/reference.json: held-out real data (the validation split)
scored exactly like a model's samples, per data view, so every metric shows its floor.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from gm.data import load_splits
from gm.io import atomic_path, write_json
from gm.metrics import reference_metrics
from gm.metrics.classifier import Classifier, fit_dataset_classifier
from pipeline import common, params as P
from pipeline.common import log


def load_classifier(path: Path, device="cpu") -> Classifier | None:
    """The classifier of a dataset, or None for a dataset without labels."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("n_classes") == 0:
        return None
    return Classifier.load(path, map_location=device)


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
        reference[view_name] = reference_metrics(
            view["val"], view["test"], view["train"], clf,
            generator=common.stage_seed(params, "reference", ds), n_boot=cfg.n_bootstrap)
    write_json(out.parent / "reference.json", {"dataset": ds, "classifier": info,
                                               "reference": reference})
    log.info("classifier of %s: %s", ds, info or "no labels")


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
