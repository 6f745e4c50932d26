"""Small network builders shared by the neural generative models."""
from __future__ import annotations

from typing import Callable

from torch import nn


def mlp(sizes: list[int] | tuple[int, ...], activation: Callable[[], nn.Module] = nn.ReLU
        ) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1], a fresh ``activation()`` between them
    (none after the last).  Initialised from torch's global RNG (seeded by the pipeline)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*layers)
