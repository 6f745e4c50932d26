"""Diffusion probabilistic model for binary data (book 20.13; Sohl-Dickstein et al. 2015, in the
DDPM form of Ho et al. 2020 with the discrete kernel of Hoogeboom et al. 2021).

Forward (binomial) diffusion, per pixel: q(x_t | x_{t-1}) = (1 - beta_t) [x_t = x_{t-1}] +
beta_t / 2, so q(x_t | x_0) = alphabar_t [x_t = x_0] + (1 - alphabar_t) / 2 with
alphabar_t = prod_s (1 - beta_s).  Sohl-Dickstein et al.'s schedule beta_t = 1 / (T - t + 1)
gives alphabar_t = 1 - t / T, so x_T is exactly uniform and the prior term of the bound is 0.

Reverse model p(x_{t-1} | x_t): a network predicts x0-probabilities p^(x_0 | x_t, t) and
p(x_{t-1} = b | x_t) is proportional to q(x_t | x_{t-1} = b) q(x_{t-1} = b | x_0 = p^), the
posterior with x_0 replaced by its prediction (Hoogeboom et al. 2021, eq. 9), kept in
[P_FLOOR, 1 - P_FLOOR] so that every transition has a probability whose log is finite.  That
floored probability (:meth:`Diffusion.p_prev`) IS the model: the sampler draws from it and the
bound scores it, so the bound is a lower bound of the log-likelihood of the model that is
sampled (tests/test_diffusion.py checks it against the exact value, including a confident and
wrong prediction).  Every distribution is discrete, so the variational bound

  log p(x_0) >= E_q[ log p(x_0 | x_1) - sum_{t=2}^T KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) ]

is a lower bound on a discrete log-likelihood in nats (minus KL(q(x_T | x_0) || p(x_T)) = 0).
Its headline (``budget.trajectory_samples`` = k > 0) is the tighter importance-weighted bound
with the forward process as proposal (Burda et al. 2016; the VAE's IWAE bound):

  log p(x_0) >= E[log (1/k) sum_i p(x_0:T^i) / q(x_1:T^i | x_0)],  x_1:T^i ~ q(. | x_0),

whose k = 1 expectation is the bound above and which rises with k in expectation (k = 0: the
bound above, with its KL terms in closed form).
Training minimises an unbiased one-timestep estimate of minus the bound.  With ``ema_decay`` > 0
the model that is evaluated and sampled (eval mode) is the x0-predictor with the exponential
moving average of the trained weights (:mod:`gm.averaging`; Ho et al. 2020), and the bound is
that model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gm.averaging import WeightAverage
from gm.optim import Adam
from gm.base import Budget, Curve, Extras, GenerativeModel, LogLikelihood
from gm.config import Checked, ranged
from gm.estimators.importance import importance_log_likelihood
from gm.models.chains.base import check_finite
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class DiffusionConfig(Checked):
    n_steps: int = ranged(20, ge=1)      # T
    n_hidden: int = ranged(256, ge=1)
    n_layers: int = ranged(2, ge=1)      # hidden layers of the x0-predictor
    lr: float = ranged(2e-3, gt=0)       # Adam
    ema_decay: float = ranged(0.0, ge=0, lt=1)   # weight average used in eval mode (0: none)


# The reverse model's probabilities are kept in [P_FLOOR, 1 - P_FLOOR] (in float32, 1 - 2^-23),
# by the one function that both the sampler and the bound use (Diffusion.p_prev).
P_FLOOR = 1e-7


def _log_or_zero(p: Tensor) -> Tensor:
    """log p where p > 0, else 0 (the value of 0 log 0 terms once multiplied by p = 0)."""
    return torch.where(p > 0, p, torch.ones_like(p)).log()


def _bernoulli_log_prob(x: Tensor, p: Tensor) -> Tensor:
    """log Bern(x; p) summed over the last dimension, (n,); p must lie in (0, 1)."""
    return (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)


def _bernoulli_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(Bern(q) || Bern(p)) summed over the last dimension, (n,), with 0 log 0 = 0; p must
    lie in (0, 1).  No smoothing of p: an epsilon inside the logs would shrink the divergence
    and raise the bound above the model's."""
    return (q * (_log_or_zero(q) - p.log())
            + (1 - q) * (_log_or_zero(1 - q) - (1 - p).log())).sum(-1)


class X0Predictor(nn.Module):
    """MLP of (x_t (n, d) in {0, 1}, t (n,)) to the logits (n, d) of p^(x_0 = 1 | x_t, t):
    input layer plus an embedding of t, then ``n_layers - 1`` SiLU + linear layers."""

    def __init__(self, data_dim: int, n_steps: int, n_hidden: int, n_layers: int):
        super().__init__()
        self.inp = nn.Linear(data_dim, n_hidden)
        self.time = nn.Embedding(n_steps + 1, n_hidden)
        layers = []
        for _ in range(n_layers - 1):
            layers += [nn.SiLU(), nn.Linear(n_hidden, n_hidden)]
        self.body = nn.Sequential(*layers, nn.SiLU(), nn.Linear(n_hidden, data_dim))

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        return self.body(self.inp(2 * xt - 1) + self.time(t))


@register("diffusion")
class Diffusion(GenerativeModel):
    """x0-predictor ``net`` (:class:`X0Predictor`) and, with ema_decay > 0, its weight average."""

    Config = DiffusionConfig
    progress = Curve("neg_bound", "negative variational bound (one-timestep estimate)",
                     "nats per image")
    input_kind = "binary"

    def __init__(self, data_dim: int, config: DiffusionConfig):
        super().__init__(data_dim, config)
        T = config.n_steps
        self.net = X0Predictor(data_dim, T, config.n_hidden, config.n_layers)
        self.average = (WeightAverage(self.net, config.ema_decay) if config.ema_decay > 0
                        else None)
        t = torch.arange(T + 1, dtype=torch.float64)
        self.register_buffer("alphabar", (1 - t / T))                     # (T + 1,), [0] = 1

    def make_optimizers(self):
        cfg = self.config
        return {"adam": Adam(self.net.parameters(), lr=cfg.lr)}

    def beta(self, t: Tensor) -> Tensor:
        """beta_t = 1 / (T - t + 1) for t in 1..T."""
        return 1.0 / (self.config.n_steps - t + 1).double()

    # --- forward process -----------------------------------------------------------------
    def q_xt_given_x0(self, x0: Tensor, t: Tensor) -> Tensor:
        """P(x_t = 1 | x_0) (n, d) for t (n,) in 0..T."""
        a = self.alphabar[t].unsqueeze(1).to(x0.dtype)
        return a * x0 + (1 - a) / 2

    def posterior(self, xt: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """P(x_{t-1} = 1 | x_t, x_0) for t (n,) in 1..T; x0 may be a probability (n, d).

        Proportional to q(x_t | x_{t-1} = b) q(x_{t-1} = b | x_0), over b in {0, 1}.
        """
        beta = self.beta(t).unsqueeze(1).to(xt.dtype)
        like1 = (1 - beta) * xt + beta / 2                    # q(x_t | x_{t-1} = 1)
        like0 = (1 - beta) * (1 - xt) + beta / 2              # q(x_t | x_{t-1} = 0)
        prior1 = self.q_xt_given_x0(x0, t - 1)                # q(x_{t-1} = 1 | x_0)
        w1, w0 = like1 * prior1, like0 * (1 - prior1)
        return w1 / (w1 + w0)

    # --- reverse model -------------------------------------------------------------------
    def x0_probs(self, xt: Tensor, t: Tensor) -> Tensor:
        """p^(x_0 = 1 | x_t, t), (n, d): the trained weights in train mode, their average (when
        kept) in eval mode."""
        if self.average is not None and not self.training:
            return torch.sigmoid(self.average.call(self.net, xt, t))
        return torch.sigmoid(self.net(xt, t))

    def p_prev(self, xt: Tensor, t: Tensor) -> Tensor:
        """p(x_{t-1} = 1 | x_t), (n, d), for t (n,) in 1..T, in [P_FLOOR, 1 - P_FLOOR]: the
        reverse model, used alike by the sampler (:meth:`trajectory`) and the bound."""
        return self.posterior(xt, self.x0_probs(xt, t), t).clamp(P_FLOOR, 1 - P_FLOOR)

    def bound_term(self, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """One-sample estimate of the t-th term of minus the bound, (n,), t (n,) in 1..T:
        x_t ~ q(x_t | x_0), then :meth:`term_given`."""
        return self.term_given(x0, bernoulli(self.q_xt_given_x0(x0, t), generator), t)

    def term_given(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The t-th term of minus the bound given x_t (n, d), (n,), t (n,) in 1..T:
        t = 1: -log p(x_0 | x_1); t >= 2: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
        with p = :meth:`p_prev`, the probabilities the sampler draws from."""
        p = self.p_prev(xt, t)
        q = self.posterior(xt, x0, t)
        nll = -_bernoulli_log_prob(x0, p)
        return torch.where(t == 1, nll, _bernoulli_kl(q, p))

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        T = self.config.n_steps
        t = torch.randint(1, T + 1, (x.shape[0],), generator=generator, device=x.device)
        loss = T * self.bound_term(x, t, generator).mean()          # unbiased for -bound
        check_finite(loss, "diffusion")
        self.optimizers()["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers()["adam"].step()
        if self.average is not None:
            self.average.update(self.net)
        return {"neg_bound": float(loss.detach())}

    # --- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def trajectory(self, n: int, generator: torch.Generator) -> list[Tensor]:
        """Ancestral samples x_T, ..., x_0 of the reverse chain, T + 1 tensors (n, d)."""
        x = bernoulli(torch.full((n, self.data_dim), 0.5, device=self.device), generator)
        out = [x]
        for step in range(self.config.n_steps, 0, -1):
            t = torch.full((n,), step, device=x.device, dtype=torch.long)
            x = bernoulli(self.p_prev(x, t), generator)
            out.append(x)
        return out

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        return self.trajectory(n, generator)[-1]

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def bound_terms(self, x: Tensor, generator: torch.Generator, samples: int) -> Tensor:
        """Monte Carlo means over ``samples`` draws of x_t of every term of minus the bound,
        (T, n)."""
        T, k = self.config.n_steps, samples
        rows = []
        for step in range(1, T + 1):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            rows.append(torch.stack([self.bound_term(x, t, generator) for _ in range(k)]).mean(0))
        return torch.stack(rows).double()

    @torch.no_grad()
    def log_weights(self, x0: Tensor, m: int, generator: torch.Generator) -> Tensor:
        """log p(x_0:T) - log q(x_1:T | x_0) of m forward trajectories x_1:T ~ q(. | x_0) per
        example, (m, n) float64 (x0 (n, d)): importance weights with the forward process as
        proposal.  Their mean is the variational bound; p(x_T) = 2^-d and q(x_T | x_{T-1})
        (beta_T = 1) are both uniform."""
        T, rows = self.config.n_steps, x0.repeat(m, 1)            # (m n, d), sample-major
        prev, log_w = rows, torch.zeros(rows.shape[0], dtype=torch.float64, device=x0.device)
        for step in range(1, T + 1):
            beta = 1.0 / (T - step + 1)
            forward = (1 - beta) * prev + beta / 2                # q(x_t = 1 | x_{t-1})
            xt = bernoulli(forward, generator)
            t = torch.full((rows.shape[0],), step, device=x0.device, dtype=torch.long)
            log_w += (_bernoulli_log_prob(prev, self.p_prev(xt, t)).double()
                      - _bernoulli_log_prob(xt, forward).double())
            prev = xt
        return (log_w - self.data_dim * math.log(2)).view(m, x0.shape[0])

    def variational_bound(self, x: Tensor, generator: torch.Generator,
                          budget: Budget) -> LogLikelihood:
        """The variational bound, KL terms in closed form, Monte Carlo over x_t ~ q(x_t | x)
        with ``budget.bound_samples`` draws per (example, t)."""
        return LogLikelihood(-self.bound_terms(x, generator, budget.bound_samples).sum(0),
                             "diffusion_elbo", "lower_bound",
                             info={"n_steps": self.config.n_steps,
                                   "bound_samples": budget.bound_samples})

    def per_example_cost(self, budget: Budget) -> bool:
        return budget.trajectory_samples > 0    # k trajectories of T steps per example

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """The importance-weighted bound over ``budget.trajectory_samples`` trajectories per
        example; with 0, :meth:`variational_bound`."""
        k = budget.trajectory_samples
        if k == 0:
            return self.variational_bound(x, generator, budget)
        values = importance_log_likelihood(x, lambda xb, m: self.log_weights(xb, m, generator),
                                           k, chunk=min(k, 100))
        return LogLikelihood(values, "diffusion_iw", "lower_bound",
                             info={"n_steps": self.config.n_steps, "trajectory_samples": k})

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """The variational bound beside the importance-weighted headline (both lower bounds)."""
        if budget.trajectory_samples == 0:
            return {}
        return {"elbo": self.variational_bound(x, generator, budget)}

    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        """table "bound_terms" (mean term per t), images["chain"] (10 reverse chains, 11 frames)."""
        terms = self.bound_terms(x, generator, budget.bound_samples).mean(1)
        out = Extras(tables={"bound_terms": [{"t": i + 1, "nats": float(v)}
                                             for i, v in enumerate(terms)]})
        traj = self.trajectory(10, generator)
        idx = torch.linspace(0, self.config.n_steps, 11).round().long().tolist()
        out.images["chain"] = torch.stack([traj[i] for i in idx], 1).reshape(-1, self.data_dim)
        if classifier is not None:
            s = self.sample(500, generator=generator)
            p = classifier(s).softmax(1)
            out.metrics["sample_classifier_confidence"] = float(p.max(1).values.mean())
        return out
