"""Small tensor operations shared by many models."""
from __future__ import annotations

import torch
from torch import Tensor


def bernoulli(p: Tensor, generator: torch.Generator) -> Tensor:
    """Binary sample with P(1) = p, same shape and dtype as p."""
    return torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype).lt_(p)
