"""The report's sample-metric legend: per metric its direction, what it measures, its space,
its range (and why it can be negative), and what the reference row means.

Labels, directions and descriptions come from :data:`gm.metrics.METRICS` where a metric is
declared there; :data:`RANGE_NOTES` adds what a reader needs to interpret a value.
"""
from __future__ import annotations

import pandas as pd

from gm.metrics import METRICS

# the sample metrics the report tabulates, in table order: feature space, then pixel space
FEATURE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage",
                   "inception_score")
PIXEL_METRICS = ("mmd_pixel", "precision_pixel", "recall_pixel", "memorization_ratio")

# for metrics that gm.metrics does not declare (yet): (label, space, better, description)
FALLBACK = {
    "density": ("density", "features", "higher",
                "how many test images' k-NN balls hold each sample, averaged and divided by k "
                "(Naeem et al. 2020): realism that is robust to outliers of the test set"),
    "coverage": ("coverage", "features", "higher",
                 "fraction of test images whose k-NN ball holds at least one sample (Naeem et "
                 "al. 2020): diversity that is robust to outlying samples"),
}

RANGE_NOTES = {
    "fid": "0 or more, never negative; biased upwards at small sample sizes (about 1/n), so "
           "even held-out data (the reference row) scores above 0",
    "kid": "an unbiased estimate of a squared distance (MMD^2 U-statistic): its expectation "
           "is 0 or more, but one estimate can be negative when samples and data are "
           "indistinguishable at this sample size; values near 0 or below mean 'no detectable "
           "difference'",
    "precision": "0 to 1",
    "recall": "0 to 1; grows with the number of samples",
    "density": "0 or more, can exceed 1; about 1 when samples follow the data distribution",
    "coverage": "0 to 1",
    "inception_score": "1 to the number of classes; measured with the dataset's own classifier, "
                       "so it is not the Inception Score of published work",
    "mmd_pixel": "unbiased estimate of MMD^2 (U-statistic): can be slightly negative near 0, "
                 "as KID",
    "precision_pixel": "0 to 1; on data with few distinct patterns (bars and stripes) the "
                       "fraction of samples that are exactly valid patterns",
    "recall_pixel": "0 to 1",
    "memorization_ratio": "0 or more; catches literal copies only (a one-pixel shift escapes "
                          "it); above 1: samples lie farther from the training set than "
                          "fresh test images do",
}

DIRECTION = {"lower": "lower", "higher": "higher", None: "neither (about 1 is healthy)"}


def info(name: str) -> tuple[str, str, str | None, str]:
    """(label, space, better, description) of sample metric ``name``."""
    if name in METRICS:
        m = METRICS[name]
        return m.label, m.space, m.better, m.description
    return FALLBACK.get(name, (name, "", None, ""))


SPACE = {"features": "classifier features (see above)", "pixels": "pixels"}


def legend_table(names: list[str]) -> pd.DataFrame:
    """One row per metric in ``names``: metric, better, what it measures, space, range."""
    rows = []
    for name in names:
        label, space, better, description = info(name)
        rows.append({"metric": f"{name} ({label})" if label != name else name,
                     "better": DIRECTION[better], "what it measures": description,
                     "space": SPACE.get(space, space),
                     "range, and why it can be negative": RANGE_NOTES.get(name, "")})
    return pd.DataFrame(rows)


def classifier_text(features: int | None, arch: str | None, accuracy: dict[str, float]) -> str:
    """Words for the feature space of a dataset's classifier (its own, not Inception-v3)."""
    acc = ", ".join(f"{100 * v:.0f}% on {k.removeprefix('test_accuracy_')} test images"
                    for k, v in sorted(accuracy.items()) if k.startswith("test_accuracy_"))
    size = f"{features}-feature" if features else "penultimate"
    return (f"the {size} layer of the pipeline's own {(arch or '').upper()} classifier of this "
            f"dataset{f' (accuracy {acc})' if acc else ''}; not Inception-v3, so values are "
            "not comparable with published FID/KID/IS")


REFERENCE_NOTE = (
    "Reference row: held-out real images (the validation split, disjoint from training and "
    "test data, as many as the samples) scored against the test set exactly like a model's "
    "samples. It is what a perfect model would score at this sample size: the floor of FID, "
    "KID and MMD^2 (above 0 for FID: finite samples) and the ceiling of precision, recall, "
    "density and coverage (below 1). A model beyond the reference row is within noise of it, "
    "not better than the data. Intervals are bootstrap 95% intervals (value +- 1.96 bootstrap "
    "standard errors over samples and test images) clipped to the metric's range, so an "
    "interval that ends at 0 (e.g. the reference FID's [0, ...]) was cut at the bound, not "
    "measured there; with several seeds the value and both ends are means over seeds.")
