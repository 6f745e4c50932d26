"""Generalized denoising autoencoder as a generative model (book 20.11.2-20.11.3; Bengio et al. 2013).

Corruption C(x~ | x) is salt-and-pepper noise; the encoder f and decoder g give a factorial
Bernoulli reconstruction distribution P(x | omega = g(f(x~))), trained by maximising
log P(x | x~).  Sampling is the book's four-step Markov chain: from x_t, (1) corrupt
x~ ~ C(. | x_t), (2) encode h = f(x~), (3) decode omega = g(h), (4) sample x_{t+1} ~ P(x | omega);
its stationary distribution estimates the data distribution (Bengio et al. 2013, thm. 1).
Walk-back training (20.11.3) starts that chain at a training example and penalises the
reconstruction of the example from every corrupted state along it.  Clamping part of x in the
chain samples the rest conditionally (inpainting).  log_likelihood is the Parzen proxy
(:class:`gm.models.chains.base.ChainSampler`).  "dae_walkback" is the same model with walk-back
training on by default, for the one-step vs walk-back comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, Extras, GenerativeModel
from gm.config import Checked, ranged
from gm.models.chains.base import (ChainSampler, chain_extras, check_finite, inpainting_extras,
                                   salt_and_pepper)
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class DAEConfig(Checked):
    n_hidden: int = ranged(256, ge=1)
    corruption: float = ranged(0.3, gt=0, lt=1)  # salt-and-pepper probability of C(x~ | x)
    walkback: int = ranged(1, ge=1)     # reconstruction terms per example (20.11.3); 1 = one-step
    lr: float = ranged(1e-3, gt=0)      # Adam
    sample_steps: int = ranged(100, ge=1)  # chain steps (burn-in) before a sample / inpainting


@register("dae")
class DAE(ChainSampler, GenerativeModel):
    """One hidden layer: h = tanh(W1 x~ + b1), logits of P(x | h) = W2 h + b2."""

    Config = DAEConfig
    progress = Curve("loss", "denoising reconstruction cross-entropy (mean over walkback steps)",
                     "nats per image")
    input_kind = "binary"

    def __init__(self, data_dim: int, config: DAEConfig):
        super().__init__(data_dim, config)
        self.encoder = nn.Sequential(nn.Linear(data_dim, config.n_hidden), nn.Tanh())
        self.decoder = nn.Linear(config.n_hidden, data_dim)
        self.init_chains()                            # base rate (chain starts), Parzen sigma

    def reconstruction_logits(self, x_tilde: Tensor) -> Tensor:
        """omega = g(f(x~)): logits of P(x | x~), (n, d)."""
        return self.decoder(self.encoder(x_tilde))

    # --- training ------------------------------------------------------------------------
    def walkback_terms(self, x: Tensor, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        """The walk-back objective's terms (Bengio et al. 2013, sec. 3.5; book 20.11.3).

        From x* = x, ``walkback`` times: x~ ~ C(. | x*), term = mean_n -log P(x | x~), then
        x* ~ P(. | x~) (the chain's next state, no gradient through the draw).  With
        walkback = 1 this is the ordinary denoising criterion.

        Returns (terms: list of scalar losses, corrupted inputs x~: list of (n, d)).
        """
        terms, inputs, x_star = [], [], x
        for _ in range(self.config.walkback):
            x_tilde = salt_and_pepper(x_star, self.config.corruption, generator)
            logits = self.reconstruction_logits(x_tilde)
            terms.append(F.binary_cross_entropy_with_logits(logits, x, reduction="none")
                         .sum(1).mean())
            inputs.append(x_tilde)
            x_star = bernoulli(torch.sigmoid(logits.detach()), generator)
        return terms, inputs

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.base_rate.update(x)
        terms, _ = self.walkback_terms(x, generator)
        loss = torch.stack(terms).mean()
        check_finite(loss, "dae")
        self.optimizers()["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers()["adam"].step()
        return {"loss": float(loss.detach()), "recon_nll_step1": float(terms[0].detach())}

    # --- the four-step chain -------------------------------------------------------------
    def chain_step(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """x_t (n, d) binary -> (x_{t+1} binary, P(x = 1 | omega) as the view), both (n, d)."""
        x_tilde = salt_and_pepper(x, self.config.corruption, generator)   # 1. corrupt
        p = torch.sigmoid(self.reconstruction_logits(x_tilde))            # 2-3. encode, decode
        return bernoulli(p, generator), p                                 # 4. sample

    @torch.no_grad()
    def inpaint(self, x: Tensor, observed: Tensor, generator: torch.Generator) -> Tensor:
        """Fill in x where ``observed`` (d,) bool is False by the chain with x[observed] clamped.

        The missing pixels start as coin flips; after every step the observed pixels are reset
        to their values (Bengio et al. 2013, sec. 4.3).  Returns the final view, clamped (n, d).
        """
        keep = observed.to(x.dtype)
        state = x * keep + self.chain_start(x.shape[0], generator) * (1 - keep)
        view = state
        for _ in range(self.config.sample_steps):
            state, view = self.chain_step(state, generator)
            state = x * keep + state * (1 - keep)
        return x * keep + view * (1 - keep)

    # --- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        out = chain_extras(self.chain_step, lambda m: self.chain_start(m, generator), x, generator,
                           classifier)
        out_inpaint = inpainting_extras(self.inpaint, x, generator, classifier)
        out.images |= out_inpaint.images
        out.metrics |= out_inpaint.metrics
        return out



@dataclass(frozen=True)
class DAEWalkbackConfig(DAEConfig):
    walkback: int = ranged(3, ge=1)     # walk-back training (20.11.3) by default


@register("dae_walkback")
class DAEWalkback(DAE):
    """The DAE trained with walk-back (book 20.11.3; Bengio et al. 2013, sec. 3.5) by default.

    Registered beside "dae" (one-step training) so the default pipeline trains both and the
    report compares them; only the default of ``walkback`` differs.
    """

    Config = DAEWalkbackConfig
