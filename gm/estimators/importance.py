"""Importance sampling of log p(x) with a proposal q(z | x): the IWAE bound (Burda et al. 2016).

log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],  z_i ~ q(. | x),
a bound that is tight as k -> infinity and rises monotonically with k in expectation
(Burda et al. 2016, theorem 1).  k = 1 is the evidence lower bound (ELBO, book eq. 19.30).
Used by the sigmoid belief net and the VAE with their recognition networks as proposals
(book sections 20.10.1, 20.10.3).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_i exp(log_w[i]) over dim 0: (k, n) log weights -> (n,) bound."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


ROWS = 2**16   # (sample, example) rows per call: the networks' activations stay ~1 GB


@torch.no_grad()
def importance_log_likelihood(x: Tensor, log_weights: Callable[[Tensor, int], Tensor], k: int,
                              *, chunk: int = 100, rows: int = ROWS) -> Tensor:
    """The k-sample importance-weighted bound of log p(x), drawing samples in chunks.

    x: (n, d) data.  log_weights(x, m) draws m samples z ~ q(. | x) per example (with its own
    generator) and returns their log p(x, z) - log q(z | x), shape (m, n).
    chunk: samples per call, so k = 5000 fits in memory; when chunk x n exceeds ``rows``, the
    examples go in batches of rows // chunk as well (10,000 test images x 100 samples held
    13-20 GB for the sbn, vae and dbn).  Returns (n,) float64, a stochastic lower bound of
    log p(x) (its expectation is below log p(x)).
    """
    if k < 1:
        raise ValueError(f"need k >= 1 importance samples, got {k}")
    n = x.shape[0]
    step = n if min(chunk, k) * n <= rows else max(1, rows // min(chunk, k))
    out = []
    for lo in range(0, n, step):
        xb = x[lo:lo + step]
        parts = [torch.logsumexp(log_weights(xb, min(chunk, k - start)).double(), 0)
                 for start in range(0, k, chunk)]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)
