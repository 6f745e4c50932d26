"""Deep Boltzmann machine with two hidden layers (book section 20.4; Salakhutdinov & Hinton 2009).

E(v, h1, h2) = -b'v - c1'h1 - c2'h2 - v'W1 h1 - h1'W2 h2.

Training: greedy pretraining of the two layers as RBMs with the doubling trick of
Salakhutdinov & Hinton (2009, sec. 3.1: the bottom RBM sees 2 W1 bottom-up, the top RBM
2 W2 top-down, standing in for the missing other layer), ``pretrain_epochs`` epochs each with
CD-1 at ``pretrain_lr``; then joint training whose positive phase is mean-field inference
q(h | v) = prod Bernoulli(mu) and whose negative phase is persistent Gibbs chains (book
20.4.3-20.4.4), at a smaller learning rate decayed as lr / (1 + t / lr_decay_steps).  The joint
phase needs the pretrained start and the small decaying rate (measured on bars_stripes: joint
training at 0.05 made the test log-likelihood swing between -6 and -9 nats, or fall to -16 with
5 Gibbs steps; at 0.005 decayed it rose steadily from -7.1 after pretraining to about -4.5).

Likelihood: h1 is summed out analytically, so f(v, h2) = exp(b'v + c2'h2 + sum_j
softplus(c1_j + v'W1_j + W2_j h2)).  f(v) is exact by enumerating the smaller hidden layer
when it is small (the other sums out), and so is log Z when h1 is small.  Otherwise log Z comes
from forward AIS over (v, h2) (Salakhutdinov & Hinton 2009, sec. 4) with RAISE (Burda et al.
2015) started from q(h2 | v) as the lower side of a stochastic sandwich, and the mean-field
variational bound log p(v) >= E_q[-E(v, h)] + H(q) - log Z is reported too: a lower bound with
the exact log Z ("mean_field", kind "lower_bound"), an estimate with AIS's ("mean_field+ais",
kind "estimate": log Z-hat is biased low, so the value is biased high and can exceed log p(v)).
The strategy is :class:`~gm.models.energy.base.EnergyModel`'s; the DBM gives log f(v), its
mean-field bound of log f(v), log Z, the annealing path and RAISE's start.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve
from gm.config import ranged
from gm.estimators.exact import binary_states, enumerate_log_z
from gm.models.energy.base import BaseRatePath, EnergyModel, SGDConfig
from gm.models.energy.factored_softplus import softplus_sums_factored
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class DBMConfig(SGDConfig):
    n_hidden1: int = ranged(32, ge=1)
    n_hidden2: int = ranged(12, ge=1)
    pretrain_epochs: int = ranged(20, ge=0)   # epochs of greedy pretraining per layer, then
                                              # joint training
    pretrain_lr: float = ranged(0.05, gt=0)   # CD-1 learning rate of the two pretraining RBMs
    lr: float = 0.005  # joint-training learning rate, decayed as
                                                   # lr / (1 + t / tau)
    lr_decay_steps: int = ranged(2000, ge=0)  # tau (joint updates); 0 keeps lr constant
    mf_steps: int = ranged(10, ge=1)          # mean-field iterations of the positive phase
    n_chains: int = ranged(100, ge=1)         # persistent Gibbs chains of the negative phase
    gibbs_steps: int = ranged(1, ge=1)        # Gibbs steps per update
    sample_steps: int = ranged(500, ge=1)     # Gibbs steps per sample() chain


def _entropy(mu: Tensor) -> Tensor:
    """Entropy of factorial Bernoulli(mu) summed over the last dim, (n,)."""
    return F.binary_cross_entropy(mu, mu, reduction="none").sum(-1)


@register("dbm")
class DBM(EnergyModel):
    """W1 (d, n1), W2 (n1, n2), biases b (d,), c1 (n1,), c2 (n2,)."""

    Config = DBMConfig
    progress = Curve("recon_error", "reconstruction error (pretraining layers, then mean field)",
                     "squared error per image")
    variational_bound = "mean_field"

    def __init__(self, data_dim: int, config: DBMConfig):
        super().__init__(data_dim, config)
        n1, n2 = config.n_hidden1, config.n_hidden2
        self.W1 = nn.Parameter(config.init_std * torch.randn(data_dim, n1))
        self.W2 = nn.Parameter(config.init_std * torch.randn(n1, n2))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c1 = nn.Parameter(torch.zeros(n1))
        self.c2 = nn.Parameter(torch.zeros(n2))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))
        self.register_buffer("chains_v", torch.zeros(config.n_chains, data_dim))
        self.register_buffer("chains_h2", torch.zeros(config.n_chains, n2))
        self.register_buffer("joint_steps", torch.zeros((), dtype=torch.int64))

    @property
    def phase(self) -> str:
        """"layer1", "layer2" (greedy pretraining) or "joint"."""
        e, p = int(self.epochs_done), self.config.pretrain_epochs
        return "layer1" if e < p else "layer2" if e < 2 * p else "joint"

    # --- conditionals ----------------------------------------------------------------------
    def p_h1(self, v: Tensor, h2: Tensor) -> Tensor:
        return torch.sigmoid(v @ self.W1 + h2 @ self.W2.T + self.c1)

    def mean_field(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Mean-field q(h | v): (mu1 (n, n1), mu2 (n, n2)), started bottom-up with 2 W1."""
        mu1 = torch.sigmoid(2 * v @ self.W1 + self.c1)
        mu2 = torch.sigmoid(mu1 @ self.W2 + self.c2)
        for _ in range(self.config.mf_steps):
            mu1 = self.p_h1(v, mu2)
            mu2 = torch.sigmoid(mu1 @ self.W2 + self.c2)
        return mu1, mu2

    def block_gibbs(self, v: Tensor, h2: Tensor, steps: int, generator: torch.Generator):
        """Block Gibbs h1 | (v, h2), then (v, h2) | h1; returns (v, h1, h2)."""
        h1 = None
        for _ in range(steps):
            h1 = bernoulli(self.p_h1(v, h2), generator)
            v = bernoulli(torch.sigmoid(h1 @ self.W1.T + self.b), generator)
            h2 = bernoulli(torch.sigmoid(h1 @ self.W2 + self.c2), generator)
        return v, h1, h2

    def chain_start_h2(self, n: int, generator: torch.Generator) -> Tensor:
        """n uniform draws of h2, (n, n2)."""
        return bernoulli(torch.full((n, self.config.n_hidden2), 0.5, device=self.b.device),
                         generator)

    # --- training --------------------------------------------------------------------------
    def _cd1(self, x: Tensor, W: Tensor, b_vis: Tensor, b_hid: Tensor, up: float, down: float,
             generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """CD-1 statistics of an RBM with bottom-up weights up*W and top-down down*W:
        (dW, db_vis, db_hid, reconstruction error) (ascent directions)."""
        ph = torch.sigmoid(up * (x @ W) + b_hid)
        pv = torch.sigmoid(down * (bernoulli(ph, generator) @ W.T) + b_vis)
        xn = bernoulli(pv, generator)
        phn = torch.sigmoid(up * (xn @ W) + b_hid)
        n = x.shape[0]
        return ((x.T @ ph - xn.T @ phn) / n, (x - xn).mean(0), (ph - phn).mean(0),
                ((x - pv) ** 2).sum(1).mean())

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.observe(x)
        for p in self.parameters():   # parameters outside the current phase stay untouched
            p.grad = None
        phase = self.phase
        for group in self.optimizers()["sgd"].param_groups:
            group["lr"] = self.current_lr()
        if phase == "layer1":
            dW, db, dc, err = self._cd1(x, self.W1, self.b, self.c1, 2.0, 1.0, generator)
            self.W1.grad, self.b.grad, self.c1.grad = -dW, -db, -dc
        elif phase == "layer2":
            h1 = bernoulli(torch.sigmoid(2 * x @ self.W1 + self.c1), generator)
            dW, _, dc, err = self._cd1(h1, self.W2, self.c1, self.c2, 1.0, 2.0, generator)
            self.W2.grad, self.c2.grad = -dW, -dc
        else:
            if self.joint_steps == 0:   # persistent chains start at the base rate
                self.chains_v.copy_(self.chain_start(self.config.n_chains, generator))
                self.chains_h2.copy_(self.chain_start_h2(self.config.n_chains, generator))
            self.joint_steps += 1
            mu1, mu2 = self.mean_field(x)
            v, h1, h2 = self.block_gibbs(self.chains_v, self.chains_h2,
                                         self.config.gibbs_steps, generator)
            self.chains_v.copy_(v)
            self.chains_h2.copy_(h2)
            n, m = x.shape[0], v.shape[0]
            self.W1.grad = -(x.T @ mu1 / n - v.T @ h1 / m)
            self.W2.grad = -(mu1.T @ mu2 / n - h1.T @ h2 / m)
            self.b.grad = -(x.mean(0) - v.mean(0))
            self.c1.grad = -(mu1.mean(0) - h1.mean(0))
            self.c2.grad = -(mu2.mean(0) - h2.mean(0))
            err = ((x - torch.sigmoid(mu1 @ self.W1.T + self.b)) ** 2).sum(1).mean()
        self.optimizers()["sgd"].step()
        phase_id = ("layer1", "layer2", "joint").index(phase)
        return {"recon_error": float(err), "phase": float(phase_id)}

    def current_lr(self) -> float:
        """pretrain_lr during pretraining, then lr / (1 + joint_steps / lr_decay_steps)."""
        cfg = self.config
        if self.phase != "joint":
            return cfg.pretrain_lr
        t = float(self.joint_steps)
        return cfg.lr / (1.0 + t / cfg.lr_decay_steps) if cfg.lr_decay_steps else cfg.lr

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.epochs_done += 1
        return {"lr": self.current_lr()}

    # --- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        v = self.chain_start(n, generator)
        v, _, _ = self.block_gibbs(v, self.chain_start_h2(n, generator),
                                   self.config.sample_steps, generator)
        return v

    # --- likelihood ------------------------------------------------------------------------
    def _params64(self):
        return [p.detach().double() for p in (self.W1, self.W2, self.b, self.c1, self.c2)]

    @torch.no_grad()
    def log_f(self, x: Tensor, budget: Budget) -> Tensor | None:
        """log f(v) = log sum_{h1, h2} exp(-E(v, h1, h2)), (n,) float64, enumerating the
        smaller hidden layer (the other sums out analytically), in chunks of examples; None
        when that layer has more than budget.exact_max_bits units."""
        W1, W2, b, c1, c2 = self._params64()
        v = x.double()
        n1, n2 = W2.shape
        if min(n1, n2) > budget.exact_max_bits:
            return None
        h = binary_states(min(n1, n2), device=v.device, dtype=torch.float64)   # (S, k)
        if n2 <= n1:   # enumerate h2; h1 sums out: sum_j softplus(c1 + v'W1 + W2 h2)
            top, down = h @ c2, h @ W2.T                                      # (S,), (S, n1)
            step = max(1, 2**23 // h.shape[0])   # examples per call: (step, S) sums, 64 MiB
            parts = [torch.logsumexp(top + softplus_sums_factored(u @ W1 + c1, down), 1)
                     for u in v.split(step)]
            return v @ b + torch.cat(parts)
        top = h @ c1 + F.softplus(h @ W2 + c2).sum(1)                          # enumerate h1
        return v @ b + torch.logsumexp(top + v @ W1 @ h.T, 1)

    @torch.no_grad()
    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z by enumerating h1 (v and h2 sum out given h1)."""
        if self.config.n_hidden1 > budget.exact_max_bits:
            return None
        W1, W2, b, c1, c2 = self._params64()

        def log_f(h):
            return h @ c1 + F.softplus(h @ W1.T + b).sum(1) + F.softplus(h @ W2 + c2).sum(1)

        return float(enumerate_log_z(log_f, W2.shape[0], max_bits=budget.exact_max_bits,
                                     device=W1.device))

    def annealing_path(self) -> "DBMAnnealingPath":
        return DBMAnnealingPath(self)

    @torch.no_grad()
    def variational_log_f(self, x: Tensor) -> Tensor:
        """log f(v) >= E_q[-E(v, h)] + H(q) with the mean-field q(h | v), (n,) float64."""
        mu1, mu2 = (m.double() for m in self.mean_field(x))
        W1, W2, b, c1, c2 = self._params64()
        v = x.double()
        neg_e = v @ b + mu1 @ c1 + mu2 @ c2 + ((v @ W1) * mu1).sum(1) + ((mu1 @ W2) * mu2).sum(1)
        return neg_e + _entropy(mu1) + _entropy(mu2)

    def raise_start(self, path):
        """Chains over (v, h2) start with h2 ~ q(h2 | v) (mean field) and
        log w_start = log f(v, h2) - log q(h2 | v) (Burda et al. 2015)."""

        def start(v: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            mu2 = self.mean_field(v)[1].double().clamp(1e-6, 1 - 1e-6)
            h2 = bernoulli(mu2, generator)
            s = torch.cat([v.double(), h2], 1)
            log_q = (h2 * mu2.log() + (1 - h2) * (1 - mu2).log()).sum(1)
            return s, path.log_f(s, 1.0) - log_q

        return start


class DBMAnnealingPath(BaseRatePath):
    """AIS path over s = (v, h2) with h1 summed out (Salakhutdinov & Hinton 2009, sec. 4):

    log f_beta(v, h2) = (1-beta) b_A'v + beta (b'v + c2'h2)
                        + sum_j softplus(beta (c1_j + v'W1_j + W2_j h2)),
    so beta = 0 is the base-rate model on v with h1, h2 uniform,
    Z_0 = 2^(n1 + n2) prod_i (1 + exp(b_A,i)).  The transition h1 | s, then s | h1 is a
    data-augmentation kernel, reversible for p_beta (as RAISE needs)."""

    def __init__(self, dbm: DBM):
        super().__init__(dbm.base_rate_logits())
        self.W1, self.W2, self.b, self.c1, self.c2 = dbm._params64()
        self.d = self.W1.shape[0]

    def base_log_z(self) -> float:
        n1, n2 = self.W2.shape
        return float((n1 + n2) * math.log(2.0) + F.softplus(self.b_a).sum())

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        v = super().base_sample(n, generator)
        h2 = bernoulli(torch.full((n, self.W2.shape[1]), 0.5, dtype=v.dtype, device=v.device),
                       generator)
        return torch.cat([v, h2], 1)

    def log_f(self, s: Tensor, beta: float) -> Tensor:
        v, h2 = s[:, :self.d], s[:, self.d:]
        act = v @ self.W1 + h2 @ self.W2.T + self.c1
        return (v @ ((1 - beta) * self.b_a + beta * self.b) + beta * (h2 @ self.c2)
                + F.softplus(beta * act).sum(1))

    def transition(self, s: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        v, h2 = s[:, :self.d], s[:, self.d:]
        h1 = bernoulli(torch.sigmoid(beta * (v @ self.W1 + h2 @ self.W2.T + self.c1)), generator)
        v = bernoulli(torch.sigmoid((1 - beta) * self.b_a + beta * (self.b + h1 @ self.W1.T)),
                      generator)
        h2 = bernoulli(torch.sigmoid(beta * (self.c2 + h1 @ self.W2)), generator)
        return torch.cat([v, h2], 1)
