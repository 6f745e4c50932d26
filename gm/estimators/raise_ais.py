"""Reverse AIS (RAISE; Burda, Grosse & Salakhutdinov 2015) and the AIS sandwich of log p(x).

Forward AIS (:mod:`gm.estimators.ais`) gives Z-hat, unbiased for Z, so log Z-hat is a
stochastic lower bound of log Z and log f(x) - log Z-hat a stochastic UPPER bound of log p(x)
(in expectation: E[log Z-hat] <= log Z by Jensen).

RAISE runs the annealing chain backwards from a test example.  The annealing model
p_ann(x_K) = sum p_0(x_0) T_1(x_1 | x_0) ... T_K(x_K | x_{K-1}) is a proper generative model
that tends to the target p as K grows; starting at x_K (the example, completed with a posterior
draw of any latent part) and moving x_{k-1} ~ T_k(. | x_k) with transitions reversible for
p_k, the weight

    w = w_start * prod_{k=0}^{K-1} f_k(x_k) / f_{k+1}(x_k) / Z_0

is unbiased for p_ann(x) (Burda et al. 2015, eq. 9), so log mean w is a stochastic LOWER bound of
log p_ann(x), which approaches log p(x) as the annealing gets longer.  It is NOT a bound of
log p(x): p_ann is another model, and on data far from the model a short annealing, which keeps
p_ann close to the base distribution, puts log p_ann(x) above log p(x) (tests/test_raise.py:
+4.4 nats with 3 intermediate distributions on the states least likely under a 10-pixel RBM).
RAISE values are therefore kind "estimate" (gm.base.KINDS): the sandwich is a stochastic
bracket, not a guaranteed one (:data:`SANDWICH_NOTE`).

``w_start`` corrects for how the latent part of x_K was drawn: f_K(x_K) / q(h_K | x) for
h_K ~ q (= f_K(x), the unnormalised marginal, when q is the exact posterior or there is no
latent part).

The reverse chain moves with the reversal T~_k of each forward kernel: the path's optional
``reverse_transition(x, beta, generator)`` (e.g. a single-site Gibbs sweep in the opposite
order), else ``transition`` itself, which must then satisfy detailed balance for p_beta
(e.g. data-augmentation Gibbs v -> h -> v).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from gm.base import LogLikelihood
from gm.estimators.ais import AISResult, AnnealingPath, ais_step
from gm.progress import progress

#: What each side of the AIS sandwich bounds, and when (printed by the report beside it).
SANDWICH_NOTE = (
    "The AIS sandwich is a stochastic bracket, not a guaranteed one. Upper side: forward AIS, "
    "log f(x) - log Z-hat, an estimate of log p(x) that is an upper bound in expectation "
    "(Z-hat is unbiased, so E[log Z-hat] <= log Z by Jensen's inequality). Lower side: RAISE, "
    "a lower bound in expectation of log p_ann(x), the likelihood of the annealing model, "
    "which equals log p(x) only as the annealing approaches the model (many intermediate "
    "distributions); with short annealing on data far from the model it can lie above "
    "log p(x). Both are labelled estimates.")

# (x repeated per chain (n * m, d), generator) -> (chain start states (n * m, ...), log w_start (n * m,))
StartFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]


def reverse_ais_log_weights(path: AnnealingPath, x_start: Tensor, log_w_start: Tensor,
                            betas: Tensor, generator: torch.Generator, *,
                            desc: str = "RAISE") -> Tensor:
    """Log RAISE weights of chains started at beta = 1 in ``x_start`` (N, ...).

    log_w_start: (N,) log f_K(x_K) - log q(h_K | x) (see the module docstring).
    betas: 0 = beta_0 < ... < beta_K = 1 (:func:`~gm.estimators.ais.beta_schedule`).
    Returns (N,) float64 log weights; exp of each is unbiased for p_ann(x).
    """
    b = betas.tolist()
    log_w = log_w_start.double().clone()
    if hasattr(path, "reverse_transition"):
        x = x_start
        for k in progress(range(len(b) - 1, 0, -1), desc=desc):
            x = path.reverse_transition(x, b[k], generator)          # x_{k-1} ~ T~_k(. | x_k)
            log_w += (path.log_f(x, b[k - 1]) - path.log_f(x, b[k])).double()
        return log_w - path.base_log_z()
    # a reversible T_k is its own reversal: the increment at beta_k -> beta_{k-1} and the next
    # move T_{k-1} form one forward AIS step with the temperatures swapped (fused if the path can)
    x = path.transition(x_start, b[-1], generator)
    for k in progress(range(len(b) - 1, 0, -1), desc=desc):
        delta, x = ais_step(path, x, b[k], b[k - 1], generator, move=k > 1)
        log_w += delta.double()
    return log_w - path.base_log_z()


@torch.no_grad()
def raise_log_likelihood(path: AnnealingPath, start: StartFn, x: Tensor, n_chains: int,
                         betas: Tensor, generator: torch.Generator, *,
                         desc: str = "RAISE") -> Tensor:
    """Per-example RAISE estimate log mean_m w_m of log p_ann(x), (n,) float64 on the CPU.

    x: (n, d) test examples; ``start`` completes each of the ``n_chains`` copies of an example
    into a chain state at beta = 1 and returns its log w_start.  A stochastic lower bound of
    log p_ann(x) (Burda et al. 2015), the annealing model's log-likelihood: an estimate of
    log p(x) whose bias direction is not guaranteed (module docstring).
    """
    n = x.shape[0]
    x_rep = x.repeat_interleave(n_chains, dim=0)
    states, log_w0 = start(x_rep, generator)
    log_w = reverse_ais_log_weights(path, states, log_w0, betas, generator, desc=desc)
    log_w = log_w.reshape(n, n_chains).cpu()
    return torch.logsumexp(log_w, 1) - math.log(n_chains)


def ais_sandwich(log_f_x: Tensor, ais: AISResult, lower: Tensor, *,
                 info: dict[str, float] | None = None) -> LogLikelihood:
    """log p(x) by forward AIS with the RAISE value beside it: a stochastic sandwich.

    log_f_x: (n,) exact unnormalised log p*(x); ais: forward-AIS log Z; lower: (n,) RAISE.
    values = log p*(x) - log Z-hat (method "ais", kind "estimate": consistent, and an upper
    bound of log p(x) in expectation); bounds = {"lower": RAISE, a lower bound in expectation of
    log p_ann(x), "upper": the AIS values}; info["sandwich_gap"] = mean(upper - lower) in nats.
    What each side bounds, and when: :data:`SANDWICH_NOTE`.
    """
    upper = log_f_x.double().cpu() - ais.log_z
    lower = lower.double().cpu()
    out = {"log_z": ais.log_z, "log_z_stderr": ais.stderr,
           "sandwich_lower": float(lower.mean()), "sandwich_upper": float(upper.mean()),
           "sandwich_gap": float((upper - lower).mean())}
    out.update(info or {})
    return LogLikelihood(upper, "ais", "estimate", shared_stderr=ais.stderr,
                         bounds={"lower": lower, "upper": upper}, info=out)


def sandwich_estimates(sandwich: LogLikelihood) -> dict[str, LogLikelihood]:
    """validation_estimates entries of a sandwich: "ais" (with its bounds) and "raise" alone,
    kind "estimate": RAISE bounds log p_ann(x) in expectation, not log p(x)
    (:data:`SANDWICH_NOTE`)."""
    info = {k: v for k, v in sandwich.info.items() if not k.startswith("log_z")}
    return {"ais": sandwich,
            "raise": LogLikelihood(sandwich.bounds["lower"], "raise", "estimate", info=info)}
