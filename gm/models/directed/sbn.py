"""Sigmoid belief network (book section 20.10.1; Neal 1992).

Layers of binary latents h_L -> ... -> h_1 -> x, with
p(h_L) = prod Bernoulli(sigmoid(a)),  p(h_{l-1} | h_l) = prod Bernoulli(sigmoid(W_l h_l + b_l)).
A recognition network q(h_1 | x) q(h_2 | h_1) ... of the same sigmoid form is trained with
  * ``wake_sleep`` (Hinton et al. 1995): wake: maximise log p(x, h), h ~ q(. | x);
    sleep: maximise log q(h | x) on dreams (x, h) ~ p;
  * ``nvil`` (Mnih & Gregor 2014): maximise the ELBO by the score-function estimator of
    section 20.9 with an input-dependent baseline, a running-mean baseline and variance
    normalisation (:mod:`gm.stochastic_grad`).
log p(x) is exact by enumerating every latent configuration (``budget.exact_chunk`` at a
time) when there are at most ``budget.exact_max_bits`` latent bits, else the
importance-sampling bound with q as proposal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.optim import Adam
from gm.base import Budget, Curve, GenerativeModel, LogLikelihood
from gm.config import Checked, ranged, require
from gm.errors import ConfigError
from gm.estimators.exact import binary_states
from gm.estimators.importance import importance_log_likelihood
from gm.models.directed.vae import bernoulli_log_prob
from gm.nets import mlp
from gm.ops import bernoulli
from gm.registry import register
from gm.stochastic_grad import RunningBaseline, score_function_surrogate


@dataclass(frozen=True)
class SBNConfig(Checked):
    hidden: tuple[int, ...] = ranged((16,), ge=1, each=True)  # latent layer sizes, the one
                                                              # nearest the data first
    method: Literal["nvil", "wake_sleep"] = "nvil"
    lr: float = ranged(1e-2, gt=0)
    baseline_hidden: int = ranged(32, ge=1)        # NVIL's input-dependent baseline MLP
    baseline_decay: float = ranged(0.9, ge=0, lt=1)  # NVIL's running mean / variance of the signal

    def __post_init__(self):
        super().__post_init__()
        require(len(self.hidden) >= 1, "hidden", "need one or more latent layers")


@register("sbn")
class SBN(GenerativeModel):
    """Sigmoid belief net; ``gen[l]`` maps layer l+1 to layer l (layer 0 = x), ``rec[l]`` the
    reverse; ``prior_logits`` (hidden[-1],) is the top layer's factorial prior."""

    Config = SBNConfig
    progress = Curve("elbo", "training ELBO", "nats per image", True)
    input_kind = "binary"

    def __init__(self, data_dim: int, config: SBNConfig):
        super().__init__(data_dim, config)
        sizes = [data_dim, *config.hidden]
        self.gen = nn.ModuleList(nn.Linear(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1))
        self.rec = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))
        self.prior_logits = nn.Parameter(torch.zeros(config.hidden[-1]))
        self.baseline_net = mlp([data_dim, config.baseline_hidden, 1], nn.Tanh)
        self.baseline = RunningBaseline(config.baseline_decay)

    @property
    def latent_bits(self) -> int:
        return sum(self.config.hidden)

    # --- the two directions ----------------------------------------------------------------
    def log_prior_h(self, hs: list[Tensor]) -> Tensor:
        """log p(h_1, ..., h_L) = log p(h_L) + sum_l log p(h_l | h_{l+1}); (...)."""
        out = bernoulli_log_prob(hs[-1], self.prior_logits)
        for l in range(1, len(hs)):
            out = out + bernoulli_log_prob(hs[l - 1], self.gen[l](hs[l]))
        return out

    def log_joint(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """log p(x, h_1, ..., h_L) for x (..., d), hs[l] (..., hidden[l]); (...)."""
        return bernoulli_log_prob(x, self.gen[0](hs[0])) + self.log_prior_h(hs)

    def recognize(self, x: Tensor, generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """h ~ q(h | x) layer by layer; returns (samples hs, log q(hs | x) (...,))."""
        hs, log_q, below = [], 0.0, x
        for lin in self.rec:
            logits = lin(below)
            h = bernoulli(torch.sigmoid(logits.detach()), generator)
            log_q = log_q + bernoulli_log_prob(h, logits)
            hs.append(h)
            below = h
        return hs, log_q

    def log_q(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """log q(hs | x); (...)."""
        layers = [x, *hs]
        return sum(bernoulli_log_prob(layers[l + 1], lin(layers[l]))
                   for l, lin in enumerate(self.rec))

    @torch.no_grad()
    def dream(self, n: int, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """Ancestral sample (x, [h_1, ..., h_L]) of p; x (n, d)."""
        top = bernoulli(torch.sigmoid(self.prior_logits).expand(n, -1).contiguous(), generator)
        layers = [top]
        for lin in reversed(self.gen):
            layers.append(bernoulli(torch.sigmoid(lin(layers[-1])), generator))
        layers.reverse()
        return layers[0], layers[1:]

    # --- training ------------------------------------------------------------------------
    def make_optimizers(self):
        cfg = self.config
        return {"adam": Adam(self.parameters(), lr=cfg.lr)}

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        if self.config.method == "wake_sleep":
            loss, metrics = self._wake_sleep_loss(x, generator)
        else:
            loss, metrics = self._nvil_loss(x, generator)
        self.optimizers()["adam"].zero_grad()
        loss.backward()
        self.optimizers()["adam"].step()
        return metrics

    def _wake_sleep_loss(self, x: Tensor, generator: torch.Generator):
        with torch.no_grad():
            hs, log_q = self.recognize(x, generator)
            x_dream, hs_dream = self.dream(x.shape[0], generator)
        log_p = self.log_joint(x, hs)                          # wake: generative weights
        sleep = self.log_q(x_dream, hs_dream)                  # sleep: recognition weights
        elbo = (log_p.detach() - log_q).mean()
        return -(log_p.mean() + sleep.mean()), {"elbo": float(elbo),
                                                 "sleep_log_q": float(sleep.mean().detach())}

    def _nvil_loss(self, x: Tensor, generator: torch.Generator):
        hs, log_q = self.recognize(x, generator)
        log_p = self.log_joint(x, hs)
        signal = log_p - log_q                                 # learning signal, (B,)
        b_x = self.baseline_net(x).squeeze(1)
        baseline = b_x.detach() + self.baseline.mean
        surrogate = score_function_surrogate(log_q, signal, baseline, self.baseline.scale)
        residual = signal.detach() - self.baseline.mean - b_x  # fits b(x) to the centred signal
        self.baseline.update(signal.detach() - b_x.detach())
        loss = -surrogate.mean() + (residual**2).mean()
        return loss, {"elbo": float(signal.mean().detach()),
                      "baseline_mse": float((residual**2).mean().detach())}

    # --- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        return self.dream(n, generator)[0]

    # --- likelihood ----------------------------------------------------------------------
    def _split(self, states: Tensor) -> list[Tensor]:
        return list(states.split(list(self.config.hidden), dim=-1))

    @torch.no_grad()
    def log_likelihood_exact(self, x: Tensor, max_bits: int = 20, chunk: int = 4096) -> Tensor:
        """log p(x) = log sum_h p(x, h) over all 2^latent_bits configurations, ``chunk`` latent
        states at a time; (n,) float64."""
        if self.latent_bits > max_bits:
            raise ConfigError("exact_max_bits",
                              f"exact enumeration of {self.latent_bits} latent bits exceeds the "
                              f"limit {max_bits}", "use the importance-sampling bound")
        n_states = 2**self.latent_bits
        parts = []
        for start in range(0, n_states, chunk):
            s = binary_states(self.latent_bits, start=start, stop=min(start + chunk, n_states),
                              device=x.device, dtype=x.dtype)
            hs = self._split(s)                                      # (m, hidden_l)
            logits = self.gen[0](hs[0])                              # (m, d)
            log_pxh = x @ logits.T - F.softplus(logits).sum(1) + self.log_prior_h(hs)  # (n, m)
            parts.append(torch.logsumexp(log_pxh.double(), 1))
        return torch.logsumexp(torch.stack(parts), 0)

    def _importance(self, x: Tensor, k: int, generator: torch.Generator) -> LogLikelihood:
        def log_weights(xb: Tensor, m: int) -> Tensor:
            xk = xb.expand(m, *xb.shape)
            hs, log_q = self.recognize(xk, generator)
            return self.log_joint(xk, hs) - log_q
        values = importance_log_likelihood(x, log_weights, k)
        return LogLikelihood(values, "iwae" if k > 1 else "elbo", "lower_bound",
                             info={"importance_samples": k})

    def per_example_cost(self, budget: Budget) -> bool:
        return self.latent_bits > budget.exact_max_bits     # importance sampling

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        if self.latent_bits <= budget.exact_max_bits:
            return LogLikelihood(self.log_likelihood_exact(x, budget.exact_max_bits,
                                                           budget.exact_chunk),
                                 "exact", "exact", info={"latent_bits": self.latent_bits})
        return self._importance(x, budget.importance_samples, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        if self.latent_bits > budget.exact_max_bits:
            return {"elbo": self._importance(x, 1, generator)}
        return {"iwae": self._importance(x, budget.importance_samples, generator),
                "elbo": self._importance(x, 1, generator)}
