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
from forward AIS over (v, h2) (Salakhutdinov & Hinton 2009, sec. 4) with a RAISE lower bound
(Burda et al. 2015) started from q(h2 | v), and the mean-field variational lower bound
log p(v) >= E_q[-E(v, h)] + H(q) - log Z is reported too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, GenerativeModel, LogLikelihood
from gm.config import require
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.estimators.exact import binary_states, enumerate_log_z
from gm.estimators.raise_ais import ais_sandwich, raise_log_likelihood, sandwich_estimates
from gm.models.rbm import base_rate, observe_batch
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class DBMConfig:
    n_hidden1: int = 32
    n_hidden2: int = 12
    pretrain_epochs: int = 20     # epochs of greedy pretraining per layer, then joint training
    pretrain_lr: float = 0.05     # CD-1 learning rate of the two pretraining RBMs
    lr: float = 0.005             # joint-training learning rate, decayed as lr / (1 + t / tau)
    lr_decay_steps: int = 2000    # tau (joint updates); 0 keeps lr constant
    momentum: float = 0.5
    weight_decay: float = 1e-4
    init_std: float = 0.01
    mf_steps: int = 10            # mean-field iterations of the positive phase
    n_chains: int = 100           # persistent Gibbs chains of the negative phase
    gibbs_steps: int = 1          # Gibbs steps per update
    sample_steps: int = 500       # Gibbs steps per sample() chain
    raise_chains: int = 5         # reverse-AIS chains per test example

    def __post_init__(self):
        for name in ("n_hidden1", "n_hidden2", "mf_steps", "n_chains", "gibbs_steps",
                     "sample_steps", "raise_chains"):
            v = getattr(self, name)
            require(v >= 1, name, f"must be >= 1, got {v}")
        require(self.pretrain_epochs >= 0, "pretrain_epochs",
                f"must be >= 0, got {self.pretrain_epochs}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.pretrain_lr > 0, "pretrain_lr", f"must be > 0, got {self.pretrain_lr}")
        require(self.lr_decay_steps >= 0, "lr_decay_steps",
                f"must be >= 0, got {self.lr_decay_steps}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


def _entropy(mu: Tensor) -> Tensor:
    """Entropy of factorial Bernoulli(mu) summed over the last dim, (n,)."""
    return F.binary_cross_entropy(mu, mu, reduction="none").sum(-1)


@register("dbm")
class DBM(GenerativeModel):
    """W1 (d, n1), W2 (n1, n2), biases b (d,), c1 (n1,), c2 (n2,)."""

    Config = DBMConfig
    input_kind = "binary"

    def __init__(self, data_dim: int, config: DBMConfig):
        super().__init__(data_dim, config)
        n1, n2 = config.n_hidden1, config.n_hidden2
        self.W1 = nn.Parameter(config.init_std * torch.randn(data_dim, n1))
        self.W2 = nn.Parameter(config.init_std * torch.randn(n1, n2))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c1 = nn.Parameter(torch.zeros(n1))
        self.c2 = nn.Parameter(torch.zeros(n2))
        self.register_buffer("data_sum", torch.zeros(data_dim, dtype=torch.float64))
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))
        self.register_buffer("chains_v", torch.zeros(config.n_chains, data_dim))
        self.register_buffer("chains_h2", torch.zeros(config.n_chains, n2))
        self.register_buffer("joint_steps", torch.zeros((), dtype=torch.int64))

    def make_optimizers(self):
        cfg = self.config
        return {"sgd": torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    def base_rate(self) -> Tensor:
        return base_rate(self.data_sum, self.data_count).to(self.b.dtype)

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

    def gibbs(self, v: Tensor, h2: Tensor, steps: int, generator: torch.Generator):
        """Block Gibbs h1 | (v, h2), then (v, h2) | h1; returns (v, h1, h2)."""
        h1 = None
        for _ in range(steps):
            h1 = bernoulli(self.p_h1(v, h2), generator)
            v = bernoulli(torch.sigmoid(h1 @ self.W1.T + self.b), generator)
            h2 = bernoulli(torch.sigmoid(h1 @ self.W2 + self.c2), generator)
        return v, h1, h2

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
        observe_batch(x, self.data_sum, self.data_count, self.b)
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
                self.chains_v.copy_(bernoulli(self.base_rate().expand_as(self.chains_v),
                                              generator))
                self.chains_h2.copy_(bernoulli(torch.full_like(self.chains_h2, 0.5), generator))
            self.joint_steps += 1
            mu1, mu2 = self.mean_field(x)
            v, h1, h2 = self.gibbs(self.chains_v, self.chains_h2, self.config.gibbs_steps,
                                   generator)
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
        v = bernoulli(self.base_rate().expand(n, -1).contiguous(), generator)
        h2 = bernoulli(torch.full((n, self.config.n_hidden2), 0.5, device=v.device), generator)
        v, _, _ = self.gibbs(v, h2, self.config.sample_steps, generator)
        return v

    # --- likelihood ------------------------------------------------------------------------
    def _params64(self):
        return [p.detach().double() for p in (self.W1, self.W2, self.b, self.c1, self.c2)]

    @torch.no_grad()
    def log_f_v(self, v: Tensor, max_bits: int = 20) -> Tensor:
        """Exact log f(v) = log sum_{h1, h2} exp(-E(v, h1, h2)), (n,), enumerating the smaller
        hidden layer (the other sums out analytically), in chunks of examples."""
        W1, W2, b, c1, c2 = self._params64()
        v = v.double()
        n1, n2 = W2.shape
        if min(n1, n2) > max_bits:
            raise ValueError(f"log_f_v: both hidden layers exceed {max_bits} bits")
        h = binary_states(min(n1, n2), device=v.device, dtype=torch.float64)   # (S, k)
        if n2 <= n1:   # enumerate h2; h1 sums out: sum_j softplus(c1 + v'W1 + W2 h2)
            top, down = h @ c2, h @ W2.T                                      # (S,), (S, n1)
            step = max(1, 2**22 // (h.shape[0] * n1))
            parts = [torch.logsumexp(top + F.softplus((u @ W1 + c1)[:, None] + down).sum(-1), 1)
                     for u in v.split(step)]
            return v @ b + torch.cat(parts)
        top = h @ c1 + F.softplus(h @ W2 + c2).sum(1)                          # enumerate h1
        return v @ b + torch.logsumexp(top + v @ W1 @ h.T, 1)

    @torch.no_grad()
    def log_z_exact(self, max_bits: int = 20) -> float:
        """Exact log Z by enumerating h1 (v and h2 sum out given h1)."""
        W1, W2, b, c1, c2 = self._params64()

        def log_f(h):
            return h @ c1 + F.softplus(h @ W1.T + b).sum(1) + F.softplus(h @ W2 + c2).sum(1)

        return float(enumerate_log_z(log_f, W2.shape[0], max_bits=max_bits, device=W1.device))

    def annealing_path(self) -> "DBMAnnealingPath":
        return DBMAnnealingPath(*self._params64(), self.base_rate())

    @torch.no_grad()
    def mean_field_bound(self, v: Tensor, log_z: float) -> Tensor:
        """log p(v) >= E_q[-E(v, h)] + H(q) - log Z with the mean-field q(h | v), (n,)."""
        mu1, mu2 = (m.double() for m in self.mean_field(v))
        W1, W2, b, c1, c2 = self._params64()
        v = v.double()
        neg_e = v @ b + mu1 @ c1 + mu2 @ c2 + ((v @ W1) * mu1).sum(1) + ((mu1 @ W2) * mu2).sum(1)
        return neg_e + _entropy(mu1) + _entropy(mu2) - log_z

    @torch.no_grad()
    def raise_log_px(self, x: Tensor, budget: Budget, generator: torch.Generator) -> Tensor:
        """RAISE per example, (n,), chains over (v, h2) started with h2 ~ q(h2 | v) (mean field)
        and log w_start = log f(v, h2) - log q(h2 | v) (Burda et al. 2015)."""
        path = self.annealing_path()

        def start(v, g):
            mu2 = self.mean_field(v)[1].double().clamp(1e-6, 1 - 1e-6)
            h2 = bernoulli(mu2, g)
            s = torch.cat([v.double(), h2], 1)
            log_q = (h2 * mu2.log() + (1 - h2) * (1 - mu2).log()).sum(1)
            return s, path.log_f(s, 1.0) - log_q

        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        return raise_log_likelihood(path, start, x, self.config.raise_chains, betas, generator,
                                    desc="RAISE dbm")

    def _exact_f(self, budget: Budget) -> bool:
        return min(self.config.n_hidden1, self.config.n_hidden2) <= budget.exact_max_bits

    @torch.no_grad()
    def ais_estimates(self, x: Tensor, budget: Budget, generator: torch.Generator) -> LogLikelihood:
        """Forward AIS log Z with RAISE beside it; the AIS sandwich when log f(v) is exact,
        else the mean-field lower bound with RAISE as bounds["lower"]."""
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        res = ais_log_z(self.annealing_path(), betas, budget.ais_chains, generator, desc="AIS dbm")
        lower = self.raise_log_px(x, budget, generator)
        mf = self.mean_field_bound(x, res.log_z)
        info = {"ais_chains": budget.ais_chains, "ais_betas": budget.ais_betas,
                "raise_chains": self.config.raise_chains, "mean_field_bound": float(mf.mean())}
        if self._exact_f(budget):
            return ais_sandwich(self.log_f_v(x, budget.exact_max_bits), res, lower, info=info)
        return LogLikelihood(mf, "mean_field+ais", "lower_bound", shared_stderr=res.stderr,
                             bounds={"lower": lower},
                             info={**info, "log_z": res.log_z, "log_z_stderr": res.stderr})

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        if self.config.n_hidden1 <= budget.exact_max_bits:
            log_z = self.log_z_exact(budget.exact_max_bits)
            return LogLikelihood(self.log_f_v(x, budget.exact_max_bits) - log_z, "exact", "exact",
                                 info={"log_z": log_z})
        return self.ais_estimates(x, budget, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """Beside an exact log p(x): AIS (with the RAISE/AIS sandwich), RAISE, and the
        mean-field bound with the exact log Z (a true lower bound)."""
        if self.config.n_hidden1 > budget.exact_max_bits:
            return {}
        out = sandwich_estimates(self.ais_estimates(x, budget, generator))
        out["mean_field"] = LogLikelihood(
            self.mean_field_bound(x, self.log_z_exact(budget.exact_max_bits)), "mean_field",
            "lower_bound")
        return out


class DBMAnnealingPath:
    """AIS path over s = (v, h2) with h1 summed out (Salakhutdinov & Hinton 2009, sec. 4):

    log f_beta(v, h2) = (1-beta) b_A'v + beta (b'v + c2'h2)
                        + sum_j softplus(beta (c1_j + v'W1_j + W2_j h2)),
    so beta = 0 is the base-rate model on v with h1, h2 uniform,
    Z_0 = 2^(n1 + n2) prod_i (1 + exp(b_A,i)).  The transition h1 | s, then s | h1 is a
    data-augmentation kernel, reversible for p_beta (as RAISE needs)."""

    def __init__(self, W1, W2, b, c1, c2, base_rate: Tensor):
        self.W1, self.W2, self.b, self.c1, self.c2 = W1, W2, b, c1, c2
        p = base_rate.double()
        self.b_a = torch.log(p / (1 - p))
        self.d = W1.shape[0]

    def base_log_z(self) -> float:
        n1, n2 = self.W2.shape
        return float((n1 + n2) * math.log(2.0) + F.softplus(self.b_a).sum())

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        v = bernoulli(torch.sigmoid(self.b_a).expand(n, -1).contiguous(), generator)
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
