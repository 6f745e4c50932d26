"""Nearest-neighbour memorisation check in pixel space.

It catches literal and near-literal copies only: Euclidean nearest neighbours miss a copy
that is shifted by a pixel (Theis et al. 2016, sec. 3.3).

For each sample, the Euclidean distance to its nearest training image; for each test image,
the same.  A model that copies its training data has samples much closer to the training set
than fresh data is: ratio = mean sample distance / mean test distance well below 1, and a
copy fraction (distance <= copy_tol) above the test images' own copy fraction (binary data
can repeat exactly).  A ratio well above 1 means samples are far from every training image.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gm.metrics.distances import distances

COPY_TOL = 1e-6


def nearest_distances(x: Tensor, train: Tensor, chunk: int = 2048) -> Tensor:
    """Distance from each row of x (n, d) to its nearest row of train (m, d), (n,)."""
    return torch.cat([distances(c.double(), train.double()).min(dim=1).values
                      for c in x.split(chunk)])


class NearestTrain:
    """Nearest-training-image distances of samples (n,) and test images (m,), computed once.

    Calling it with multiplicities (n,), (m,) (a bootstrap replicate) returns the summary.
    """

    def __init__(self, samples: Tensor, test: Tensor, train: Tensor,
                 copy_tol: float = COPY_TOL):
        self.d_samples = nearest_distances(samples, train)
        self.d_test = nearest_distances(test, train)
        self.copy_tol = copy_tol

    def __call__(self, w_samples: Tensor | None = None,
                 w_test: Tensor | None = None) -> dict[str, float]:
        ws = torch.ones_like(self.d_samples) if w_samples is None else w_samples.double()
        wt = torch.ones_like(self.d_test) if w_test is None else w_test.double()
        mean = lambda v, w: float((w * v).sum() / w.sum())  # noqa: E731
        s, t = mean(self.d_samples, ws), mean(self.d_test, wt)
        return {"nn_train_samples": s, "nn_train_test": t,
                "memorization_ratio": s / t if t > 0 else float("inf"),
                "copy_fraction": mean((self.d_samples <= self.copy_tol).double(), ws),
                "copy_fraction_test": mean((self.d_test <= self.copy_tol).double(), wt)}


def memorization(samples: Tensor, test: Tensor, train: Tensor,
                 copy_tol: float = COPY_TOL) -> dict[str, float]:
    """Mean nearest-training distances of samples and of test images, their ratio, and the
    fractions of exact copies (distance <= copy_tol) among samples and among test images."""
    return NearestTrain(samples, test, train, copy_tol)()
