"""Sample-quality metrics computed from samples and data only (issue 7).

The pipeline calls :func:`sample_metrics` once per (dataset, model, seed) with the model's
samples, and :func:`reference_metrics` once per dataset view with held-out real data in place
of samples: the reference row, each metric's floor.  Every metric comes with a seeded
bootstrap interval (:mod:`gm.metrics.bootstrap`; by default the normal interval
value +- 1.96 se_boot, clipped to the metric's range).  Feature-space metrics use the
penultimate layer of the dataset's own classifier (:mod:`gm.metrics.classifier`); datasets
without labels (bars_stripes) get the pixel-space metrics only.

Compare like with like: score samples against ``test`` in the view the model was trained on
(binary or real), and use the same number of samples for every model and for the reference
row where possible: FID (biased upwards by ~1/n), recall and coverage depend on the sample
size; KID, MMD^2 (unbiased), precision and density do not in expectation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gm.metrics.bootstrap import Interval, bootstrap
from gm.metrics.distances import as_points
from gm.metrics.frechet import fid
from gm.metrics.inception import inception_score
from gm.metrics.kernel import (gaussian_kernel, median_bandwidth, mmd2_unbiased,
                               polynomial_kernel, subset_standard_error)
from gm.metrics.memorization import COPY_TOL, NearestTrain
from gm.metrics.precision_recall import KNNManifolds


@dataclass(frozen=True)
class MetricInfo:
    """How the report should read a metric: label, space, which direction is better
    (None: neither, e.g. the memorisation ratio, whose healthy value is about 1), and the
    range of possible values (intervals are clipped to it)."""

    label: str
    space: str
    better: str | None
    description: str
    range: tuple[float, float] = (-math.inf, math.inf)


_INF = math.inf
METRICS: dict[str, MetricInfo] = {
    "fid": MetricInfo(
        "FID", "features", "lower", "Frechet distance of Gaussian fits to classifier features "
        "(Heusel et al. 2017); biased upwards at small n", (0.0, _INF)),
    "kid": MetricInfo(
        "KID", "features", "lower", "unbiased MMD^2, cubic polynomial kernel on classifier "
        "features (Binkowski et al. 2018); subset_se from disjoint blocks"),
    "precision": MetricInfo(
        "precision", "features", "higher", "fraction of samples in the k-NN manifold of the "
        "test data (Kynkaanniemi et al. 2019)", (0.0, 1.0)),
    "recall": MetricInfo(
        "recall", "features", "higher", "fraction of test data in the k-NN manifold of the "
        "samples (Kynkaanniemi et al. 2019)", (0.0, 1.0)),
    "density": MetricInfo(
        "density", "features", None, "real k-NN balls holding each sample, averaged and "
        "divided by k (Naeem et al. 2020): realism robust to outlying test images; about 1 "
        "for samples from the data distribution, above 1 when samples crowd its dense "
        "regions", (0.0, _INF)),
    "coverage": MetricInfo(
        "coverage", "features", "higher", "fraction of test images whose k-NN ball holds at "
        "least one sample (Naeem et al. 2020): diversity robust to outlying samples; about "
        "1 - 2^-k for samples from the data distribution", (0.0, 1.0)),
    "inception_score": MetricInfo(
        "IS", "features", "higher", "exp E KL(p(y|x) || p(y)) with the dataset's classifier "
        "(Salimans et al. 2016); 1..n_classes", (1.0, _INF)),
    "precision_pixel": MetricInfo(
        "precision (pixels)", "pixels", "higher", "k-NN manifold precision in pixel space",
        (0.0, 1.0)),
    "recall_pixel": MetricInfo(
        "recall (pixels)", "pixels", "higher", "k-NN manifold recall in pixel space",
        (0.0, 1.0)),
    "density_pixel": MetricInfo(
        "density (pixels)", "pixels", None, "k-NN density (Naeem et al. 2020) in pixel "
        "space; on data with few distinct patterns (bars and stripes) every real ball has "
        "radius 0, so it is the mean number of test copies of a sample's pattern / k, far "
        "above 1 even for real data", (0.0, _INF)),
    "coverage_pixel": MetricInfo(
        "coverage (pixels)", "pixels", "higher", "k-NN coverage (Naeem et al. 2020) in pixel "
        "space", (0.0, 1.0)),
    "mmd_pixel": MetricInfo(
        "MMD^2 (pixels)", "pixels", "lower", "unbiased MMD^2, Gaussian kernel, bandwidth = "
        "median pairwise distance of the test data (Gretton et al. 2012)"),
    "nn_train_samples": MetricInfo(
        "NN dist. samples->train", "pixels", None, "mean Euclidean distance of a sample to "
        "its nearest training image", (0.0, _INF)),
    "nn_train_test": MetricInfo(
        "NN dist. test->train", "pixels", None, "mean Euclidean distance of a test image to "
        "its nearest training image (the same for every model)", (0.0, _INF)),
    "memorization_ratio": MetricInfo(
        "memorisation ratio", "pixels", None, "nn_train_samples / nn_train_test: << 1 means "
        "samples copy training data, about 1 is healthy", (0.0, _INF)),
    "copy_fraction": MetricInfo(
        "copies", "pixels", None, "fraction of samples equal to a training image",
        (0.0, 1.0)),
    "copy_fraction_test": MetricInfo(
        "test copies", "pixels", None, "fraction of test images equal to a training image "
        "(the baseline for copy_fraction)", (0.0, 1.0)),
}


def _entries(intervals: dict[str, Interval], **extra) -> dict[str, dict]:
    """Report entries of finite-valued metrics (e.g. the memorisation ratio is undefined, so
    left out, when every test image is also a training image, as in bars_stripes)."""
    return {name: iv.clipped(*METRICS[name].range).as_dict()
            | {"better": METRICS[name].better, "space": METRICS[name].space} | extra
            for name, iv in intervals.items() if math.isfinite(iv.value)}


def _feature_metrics(fs, ft, probs, *, k, kid_subsets, boot) -> dict[str, dict]:
    """FID, KID, precision/recall/density/coverage, IS from sample features fs (n, k), test
    features ft (m, k) and sample class probabilities (n, n_classes)."""
    out = _entries(boot(lambda ws, wt: {"fid": fid(fs, ft, ws, wt)}, [len(fs), len(ft)]))
    kss, ktt, kst = polynomial_kernel(fs, fs), polynomial_kernel(ft, ft), \
        polynomial_kernel(fs, ft)
    se, b = subset_standard_error(kss, ktt, kst, kid_subsets, boot.generator)
    out |= _entries(boot(lambda ws, wt: {"kid": mmd2_unbiased(kss, ktt, kst, ws, wt)},
                         [len(fs), len(ft)]), subset_se=se, n_subsets=b)
    out |= _entries(boot(KNNManifolds(fs, ft, k), [len(fs), len(ft)]), k=k)
    out |= _entries(boot(lambda ws: {"inception_score": inception_score(probs, ws)},
                         [len(probs)]))
    return out


def _pixel_metrics(xs, xt, xtrain, *, k, bandwidth, precision_recall, copy_tol,
                   boot) -> dict[str, dict]:
    """MMD^2, memorisation and (optionally) precision/recall/density/coverage in pixel
    space."""
    s = median_bandwidth(xt) if bandwidth is None else float(bandwidth)
    kss, ktt, kst = gaussian_kernel(xs, xs, s), gaussian_kernel(xt, xt, s), \
        gaussian_kernel(xs, xt, s)
    out = _entries(boot(lambda ws, wt: {"mmd_pixel": mmd2_unbiased(kss, ktt, kst, ws, wt)},
                        [len(xs), len(xt)]), kernel="gaussian", bandwidth=s)
    out |= _entries(boot(NearestTrain(xs, xt, xtrain, copy_tol), [len(xs), len(xt)]))
    if precision_recall:
        pr = boot(KNNManifolds(xs, xt, k), [len(xs), len(xt)])
        out |= _entries({f"{n}_pixel": iv for n, iv in pr.items()}, k=k)
    return out


class _Boot:
    """bootstrap() with this run's generator, replicate count, level and interval method."""

    def __init__(self, generator: torch.Generator, n_boot: int, level: float, method: str):
        self.generator, self.n_boot, self.level, self.method = generator, n_boot, level, method

    def __call__(self, statistic, sizes) -> dict[str, Interval]:
        return bootstrap(statistic, sizes, n_boot=self.n_boot, generator=self.generator,
                         level=self.level, method=self.method)


def sample_metrics(samples, test, train, classifier=None, *,
                   generator: torch.Generator | int, n_boot: int = 100, level: float = 0.95,
                   ci_method: str = "normal",
                   k: int = 3, kid_subsets: int = 10, mmd_bandwidth: float | None = None,
                   pixel_precision_recall: bool | None = None,
                   copy_tol: float = COPY_TOL) -> dict[str, dict]:
    """Every sample-quality metric of ``samples`` against held-out ``test`` data.

    Parameters
    ----------
    samples: (n, d) model samples in [0, 1] (tensor or array, any device).
    test: (m, d) test data in the model's view; the reference of every two-sample metric.
    train: (t, d) training data in the same view (for the memorisation check only).
    classifier: a :class:`gm.metrics.classifier.Classifier` of the dataset's labels, or None
        (no labels): then only the pixel-space metrics are computed.
    generator: torch.Generator or int seed; the only randomness (bootstrap, KID subsets).
    n_boot, level: bootstrap replicates and interval coverage.
    ci_method: "normal" (value +- z se_boot, default: centred on the value, see
        :mod:`gm.metrics.bootstrap`) or "percentile".
    k: neighbours of the k-NN manifolds (precision, recall, density, coverage);
    kid_subsets: disjoint blocks of KID's subset_se.
    mmd_bandwidth: Gaussian kernel bandwidth of mmd_pixel (default: median pairwise distance
        of ``test``, so every model on one test set shares the kernel).
    pixel_precision_recall: also compute precision/recall/density/coverage in pixel space
        (default: only when there is no classifier).
    copy_tol: distance at or below which a sample counts as a copy of a training image.

    Returns
    -------
    name -> {"value", "ci_low", "ci_high", "se" (bootstrap sd), "level", "n_boot",
    "ci_method", "better" ("lower" | "higher" | None), "space" ("features" | "pixels"), "n_samples",
    "n_reference", plus metric-specific fields: kid: "subset_se", "n_subsets";
    precision/recall/density/coverage: "k"; mmd_pixel: "kernel", "bandwidth"}.  Names are
    the keys of :data:`METRICS`, which also holds labels and descriptions for the report.  A
    metric whose value is undefined is left out (memorization_ratio when no test image is more than
    copy_tol from the training set).
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    xs = as_points(samples, "samples")
    xt = as_points(test, "test", xs.shape[1])
    xtrain = as_points(train, "train", xs.shape[1])
    boot = _Boot(generator, n_boot, level, ci_method)
    out: dict[str, dict] = {}
    if classifier is not None:
        fs, probs = classifier.embed(xs.float())
        ft, _ = classifier.embed(xt.float())
        out |= _feature_metrics(fs, ft, probs, k=k, kid_subsets=kid_subsets, boot=boot)
    if pixel_precision_recall is None:
        pixel_precision_recall = classifier is None
    out |= _pixel_metrics(xs, xt, xtrain, k=k, bandwidth=mmd_bandwidth,
                          precision_recall=pixel_precision_recall, copy_tol=copy_tol, boot=boot)
    for entry in out.values():
        entry |= {"n_samples": len(xs), "n_reference": len(xt)}
    return out


def reference_metrics(heldout, test, train, classifier=None, **kwargs) -> dict[str, dict]:
    """The reference row: held-out real data (e.g. the validation split, disjoint from test
    and train) scored exactly like a model's samples, so each metric shows its floor (what a
    perfect model would get at this sample size).  Arguments as :func:`sample_metrics`."""
    return sample_metrics(heldout, test, train, classifier, **kwargs)


__all__ = ["METRICS", "MetricInfo", "reference_metrics", "sample_metrics"]
