"""Annealed importance sampling (book section 18.7; Neal 2001; Salakhutdinov & Murray 2008).

A model exposes an :class:`AnnealingPath` between a tractable base distribution p_0
(beta = 0) and itself (beta = 1); :func:`ais_log_z` runs independent chains along it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gm.progress import progress


class AnnealingPath(Protocol):
    """What AIS needs from a model: f_beta(x) proportional to p_beta(x), for beta in [0, 1]."""

    def base_log_z(self) -> float:
        """log Z_0 of the tractable base distribution (beta = 0)."""

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n exact samples of p_0, shape (n, ...)."""

    def log_f(self, x: Tensor, beta: float) -> Tensor:
        """(n,) unnormalised log p_beta(x)."""

    def transition(self, x: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        """One MCMC step that leaves p_beta invariant."""

    # Optional, for speed: ``ais_step(x, beta_prev, beta, generator, move)`` returning
    # (log_f(x, beta) - log_f(x, beta_prev), transition(x, beta) if move else x), sharing the
    # products both need (the RBM computes v W once instead of three times).


def ais_step(path: AnnealingPath, x: Tensor, beta_prev: float, beta: float,
             generator: torch.Generator, move: bool = True) -> tuple[Tensor, Tensor]:
    """One AIS step: the log-weight increment of x from beta_prev to beta, then (if ``move``)
    a transition at beta.  Uses the path's own fused ``ais_step`` when it has one."""
    if hasattr(path, "ais_step"):
        return path.ais_step(x, beta_prev, beta, generator, move)
    delta = path.log_f(x, beta) - path.log_f(x, beta_prev)
    return delta, path.transition(x, beta, generator) if move else x


def beta_schedule(n: int, kind: str = "sigmoid", *, dtype=torch.float64) -> Tensor:
    """n + 1 inverse temperatures 0 = beta_0 < ... < beta_n = 1.

    linear: evenly spaced; geometric: 1e-4 ... 1 evenly in log;
    sigmoid: sigmoid of evenly spaced points in [-4, 4], rescaled (Grosse et al. 2013).
    """
    if n < 1:
        raise ValueError(f"need at least one intermediate distribution, got {n}")
    t = torch.linspace(0.0, 1.0, n + 1, dtype=dtype)
    if kind == "linear":
        b = t
    elif kind == "geometric":
        b = torch.cat([torch.zeros(1, dtype=dtype), torch.logspace(-4, 0, n, dtype=dtype)])
    elif kind == "sigmoid":
        s = torch.sigmoid(8.0 * t - 4.0)
        b = (s - s[0]) / (s[-1] - s[0])
    else:
        raise ValueError(f"unknown schedule {kind!r}: use linear, sigmoid or geometric")
    return b


@dataclass
class AISResult:
    """log Z estimate of the target (beta = 1).

    log_z: log Z_0 + log mean_m w_m (Z-hat is unbiased for Z, so log Z-hat is a stochastic
           lower bound of log Z in expectation).
    stderr: delta-method standard error of log Z-hat, std(w) / (mean(w) sqrt(M)).
    log_weights: (M,) per-chain log importance weights.
    samples: (M, ...) final states of the chains (approximate samples of the target).
    """

    log_z: float
    stderr: float
    log_weights: Tensor
    samples: Tensor


def log_mean_exp_stderr(log_w: Tensor) -> tuple[float, float]:
    """(log mean exp(log_w), delta-method stderr of it) over the chains (M,)."""
    m = log_w.numel()
    lme = float(torch.logsumexp(log_w, 0) - math.log(m))
    w = torch.exp(log_w - log_w.max())
    se = float(w.std() / (w.mean() * math.sqrt(m))) if m > 1 else float("inf")
    return lme, se


def ais_log_z(path: AnnealingPath, betas: Tensor, n_chains: int,
              generator: torch.Generator, *, desc: str = "AIS") -> AISResult:
    """Run ``n_chains`` AIS chains along ``betas`` (from beta_schedule) and estimate log Z_1."""
    x = path.base_sample(n_chains, generator)
    log_w = torch.zeros(n_chains, dtype=torch.float64, device=x.device)
    b = betas.tolist()
    for k in progress(range(1, len(b)), desc=desc):
        delta, x = ais_step(path, x, b[k - 1], b[k], generator, move=k < len(b) - 1)
        log_w += delta.double()
    log_mean_w, se = log_mean_exp_stderr(log_w.cpu())
    return AISResult(path.base_log_z() + log_mean_w, se, log_w.cpu(), x)


def ais_convergence(path: AnnealingPath, counts: list[int], n_chains: int, schedule: str,
                    generator: torch.Generator) -> list[dict]:
    """log Z estimates with increasing numbers of intermediate distributions (report figure).

    Returns one {"betas", "log_z", "stderr"} per count, each from fresh chains.
    """
    out = []
    for k in counts:
        res = ais_log_z(path, beta_schedule(k, schedule), n_chains, generator,
                        desc=f"AIS convergence {k}")
        out.append({"betas": int(k), "log_z": res.log_z, "stderr": res.stderr})
    return out
