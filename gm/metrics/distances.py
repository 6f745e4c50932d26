"""Input checks and exact Euclidean distances shared by the sample metrics."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_points(x, name: str, dim: int | None = None) -> Tensor:
    """``x`` (array or tensor, (n, d)) as a float64 CPU tensor; rejects NaN/inf and bad shapes."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, d) array, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns, got {t.shape[1]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf (did the model diverge?)")
    return t


def distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (n, m) between rows, computed without the |a|^2+|b|^2-2ab
    cancellation, so an exact copy is at distance exactly 0."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
