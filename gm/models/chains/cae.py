"""Contractive autoencoder and its tangent-plane sampler (book 20.11.1 and 14.7; Rifai et al. 2011, 2012).

Encoder h = f(x) = sigmoid(W x + b) (n_hidden), tied decoder g(h) = sigmoid(W' h + c).
Training minimises the reconstruction cross-entropy plus lambda ||J||_F^2, the squared
Frobenius norm of the encoder Jacobian J = df/dx = diag(h (1 - h)) W, which for a sigmoid
encoder is sum_j (h_j (1 - h_j))^2 ||W_j||^2 (Rifai et al. 2011, eq. 6).

Sampling (Rifai et al. 2012, alg. 1): from x_t, h = f(x_t), draw eps ~ N(0, sigma^2 I) in
representation space, move h' = h + J J' eps, i.e. by J applied to the input-space step J' eps,
which lies in the span of the leading right singular vectors of J (the learned tangent plane),
and decode x_{t+1} = g(h').  log_likelihood is the Parzen proxy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, EitherView, Extras, GenerativeModel, check_data_view
from gm.config import Checked, ranged
from gm.models.chains.base import ChainSampler, chain_extras, check_finite
from gm.registry import register


@dataclass(frozen=True)
class CAEConfig(Checked):
    n_hidden: int = ranged(256, ge=1)
    contraction: float = ranged(0.1, ge=0)   # lambda of the Jacobian penalty
    lr: float = ranged(1e-3, gt=0)           # Adam
    sample_noise: float = ranged(1.0, ge=0)  # sigma of eps in h' = h + J J' eps
    sample_steps: int = ranged(100, ge=1)    # chain steps before a sample
    data_view: str = "binary"     # binary | real: the view of the dataset it trains on

    def __post_init__(self):
        super().__post_init__()
        check_data_view(self.data_view)


@register("cae")
class CAE(EitherView, ChainSampler, GenerativeModel):
    """W (n_hidden, d) shared by encoder and decoder, b (n_hidden,), c (d,)."""

    Config = CAEConfig
    progress = Curve("loss", "training loss: reconstruction cross-entropy + contraction penalty")

    def __init__(self, data_dim: int, config: CAEConfig):
        super().__init__(data_dim, config)
        enc = nn.Linear(data_dim, config.n_hidden)      # torch's default init, seeded by the pipeline
        self.W, self.b = nn.Parameter(enc.weight.detach()), nn.Parameter(enc.bias.detach())
        self.c = nn.Parameter(torch.zeros(data_dim))
        self.init_chains()                            # base rate (chain starts), Parzen sigma

    def encode(self, x: Tensor) -> Tensor:
        """h = f(x), (n, n_hidden)."""
        return torch.sigmoid(F.linear(x, self.W, self.b))

    def decode_logits(self, h: Tensor) -> Tensor:
        """Logits of g(h), (n, d)."""
        return F.linear(h, self.W.T, self.c)

    def jacobian(self, x: Tensor) -> Tensor:
        """J = df/dx at each x, (n, n_hidden, d)."""
        h = self.encode(x)
        return (h * (1 - h)).unsqueeze(2) * self.W

    def jacobian_penalty(self, h: Tensor) -> Tensor:
        """||J||_F^2 per example from the codes h (n, n_hidden): (n,)."""
        return ((h * (1 - h)) ** 2) @ (self.W ** 2).sum(1)

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.base_rate.update(x)
        h = self.encode(x)
        recon = F.binary_cross_entropy_with_logits(self.decode_logits(h), x,
                                                   reduction="none").sum(1).mean()
        penalty = self.jacobian_penalty(h).mean()
        loss = recon + self.config.contraction * penalty
        check_finite(loss, "cae")
        self.optimizers()["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers()["adam"].step()
        return {"loss": float(loss.detach()), "recon_nll": float(recon.detach()),
                "jacobian_norm2": float(penalty.detach())}

    # --- the tangent-plane chain ---------------------------------------------------------
    def chain_step(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """x_t (n, d) in [0, 1] -> x_{t+1} = g(f(x_t) + J J' eps), returned as state and view."""
        J = self.jacobian(x)                                              # (n, h, d)
        eps = self.config.sample_noise * torch.randn(
            x.shape[0], self.config.n_hidden, generator=generator, device=x.device, dtype=x.dtype)
        step_x = torch.einsum("nhd,nh->nd", J, eps)                       # J' eps: tangent move
        h = self.encode(x) + torch.einsum("nhd,nd->nh", J, step_x)
        x_next = torch.sigmoid(self.decode_logits(h))
        return x_next, x_next

    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        return chain_extras(self.chain_step, lambda m: self.chain_start(m, generator), x, generator,
                            classifier)
