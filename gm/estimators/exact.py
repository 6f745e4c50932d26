"""Exact log partition functions by enumerating every binary state (small models only)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from gm.errors import ConfigError


def binary_states(n_bits: int, *, start: int = 0, stop: int | None = None,
                  device=None, dtype=torch.float32) -> Tensor:
    """All binary vectors with index in [start, stop), shape (stop - start, n_bits).

    Row ``i`` is the binary expansion of ``i``, least significant bit first.
    """
    stop = 2**n_bits if stop is None else stop
    idx = torch.arange(start, stop, device=device, dtype=torch.int64)
    bits = (idx.unsqueeze(1) >> torch.arange(n_bits, device=device)) & 1
    return bits.to(dtype)


def enumerate_log_z(log_f: Callable[[Tensor], Tensor], n_bits: int, *, max_bits: int = 20,
                    chunk: int = 2**14, device=None, dtype=torch.float64) -> Tensor:
    """log sum_s exp(log_f(s)) over s in {0,1}^n_bits, in chunks of ``chunk`` states.

    log_f: maps (m, n_bits) states to (m,) unnormalised log-probabilities.
    Raises ConfigError when 2**n_bits exceeds 2**max_bits (the budget's exact_max_bits).
    """
    if n_bits > max_bits:
        raise ConfigError("exact_max_bits",
                          f"exact enumeration of {n_bits} bits exceeds the limit {max_bits}",
                          "use a sampling estimator or raise exact_max_bits")
    parts = []
    for start in range(0, 2**n_bits, chunk):
        s = binary_states(n_bits, start=start, stop=min(start + chunk, 2**n_bits),
                          device=device, dtype=dtype)
        parts.append(torch.logsumexp(log_f(s), dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0)
