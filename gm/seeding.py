"""Seeds derived from (root seed, stage, dataset, model, seed index), and generators from them."""
from __future__ import annotations

import hashlib

import torch


def derive_seed(root: int, *parts: object) -> int:
    """A 63-bit seed that depends on ``root`` and every part, stable across runs and machines."""
    text = "/".join([str(root), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
