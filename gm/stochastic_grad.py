"""Back-propagation through random operations (book section 20.9).

Two ways to get the gradient of an expectation J(theta) = E_{z ~ p_theta}[f(z, theta)]:

* reparameterization (pathwise): write z = g(eps, theta) with eps ~ p(eps) free of theta,
  so grad J = E[grad_theta f(g(eps, theta), theta)] (Kingma & Welling 2014; book eq. 20.58);
  needs continuous z and differentiable f.
* score function / REINFORCE (Williams 1992; book eq. 20.60-20.65):
  grad J = E[f grad log p_theta(z) + grad_theta f], valid for discrete z too; its variance is
  reduced by subtracting a baseline b that does not depend on z (eq. 20.63): a running mean,
  an input-dependent network (NVIL, Mnih & Gregor 2014) or the mean of the other samples
  (leave-one-out, as in VIMCO, Mnih & Rezende 2016).

Each estimator is a *surrogate*: a scalar-per-sample tensor whose autograd gradient is the
estimator, so models just call ``.backward()`` on (minus) its mean.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def reparameterized_normal(mean: Tensor, log_std: Tensor, generator: torch.Generator) -> Tensor:
    """z = mean + exp(log_std) * eps, eps ~ N(0, I); differentiable in mean and log_std.

    mean, log_std: broadcastable tensors; returns a sample of their broadcast shape.
    """
    shape = torch.broadcast_shapes(mean.shape, log_std.shape)
    eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(log_std) * eps


def score_function_surrogate(log_prob: Tensor, f: Tensor, baseline: Tensor | float = 0.0,
                             scale: Tensor | float = 1.0) -> Tensor:
    """Per-sample surrogate whose gradient is the score-function estimator of grad E[f].

    log_prob: (...) log p_theta(z) of the sampled (detached) z, differentiable in theta.
    f:        (...) the integrand at z; may itself depend on theta (its pathwise gradient is
              kept), e.g. the learning signal log p(x, h) - log q(h | x) of a belief net.
    baseline: broadcastable to f, independent of z given the conditioning input (detached).
    scale:    divides the centred signal (NVIL's variance normalisation); detached.
    Returns ((f - b) / scale).detach() * log_prob + f: the value of f plus a term of zero mean.
    """
    signal = (f - baseline) / scale
    return signal.detach() * log_prob + f


def leave_one_out_baseline(f: Tensor) -> Tensor:
    """Baseline for sample i = mean of the other k - 1 samples, along dim 0 of f (k, ...).

    Independent of sample i, so it leaves the score-function estimator unbiased (VIMCO-style).
    """
    k = f.shape[0]
    if k < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 samples along dim 0")
    return (f.sum(0, keepdim=True) - f) / (k - 1)


class RunningBaseline(nn.Module):
    """Moving mean and variance of a learning signal (NVIL, Mnih & Gregor 2014, sec. 3.3).

    ``mean`` is a baseline; ``scale`` = max(1, running std) normalises the centred signal.
    Kept in buffers so training resumes exactly from a checkpoint.
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @property
    def scale(self) -> Tensor:
        return self.var.sqrt().clamp(min=1.0)

    @torch.no_grad()
    def update(self, signal: Tensor) -> None:
        """Fold a batch of signal values (any shape) into the running statistics."""
        signal = signal.detach().float()
        m = signal.mean()
        v = signal.var() if signal.numel() > 1 else self.var
        a = self.decay if self.count > 0 else 0.0  # the first batch sets the statistics
        self.mean.mul_(a).add_((1 - a) * m)
        self.var.mul_(a).add_((1 - a) * v)
        self.count += 1
