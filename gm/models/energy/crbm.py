"""Conditional RBM for sequences (book section 20.7; Taylor, Hinton & Roweis 2007).

A binary RBM over the current frame v_t (d,) and hidden units h_t (n_hidden,) whose biases
depend on the previous ``order`` frames, concatenated as the history u_t = [v_{t-N}, ...,
v_{t-1}] (N d,):

    E(v_t, h_t | u_t) = -(b + A'u_t)'v_t - (c + B'u_t)'h_t - v_t'W h_t.

Given its history, each frame is an ordinary RBM with these "dynamic biases", so the model
is trained by CD-k on every (history, frame) window of the training sequences, and the
conditional log-likelihood log p(v_t | u_t) = -F(v_t | u_t) - log Z(u_t) is exact by
enumerating the hidden layer when n_hidden is small, else estimated by AIS for each
conditional.  Generation runs Gibbs sampling in the conditional RBM of each new frame and
feeds the sampled frame back into the history (Taylor et al. 2007, sec. 3).
Data are sequences x of shape (n, T, d); frames 0..N-1 of a sequence only condition.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, Extras, LogLikelihood
from gm.config import ranged
from gm.errors import DataError
from gm.estimators.ais import ais_log_z, beta_schedule, log_mean_exp_stderr
from gm.estimators.exact import enumerate_log_z
from gm.models.energy.base import BaseRatePath, EnergyModel, SGDConfig
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class CRBMConfig(SGDConfig):
    order: int = ranged(2, ge=1)              # N: frames of history the biases depend on
    n_hidden: int = ranged(8, ge=1)           # exact likelihood enumerates 2^n_hidden states
                                              # per frame
    lr: float = 0.1
    momentum: float = 0.9
    cd_k: int = ranged(1, ge=1)
    gibbs_steps: int = ranged(30, ge=1)       # Gibbs rounds per generated frame
    sample_frames: int = ranged(20, ge=1)     # free-running frames before sample() returns
                                              # the last one


@register("crbm")
class CRBM(EnergyModel):
    """Conditional RBM: W (d, n_hidden), b (d,), c (n_hidden,), autoregressive weights
    A (N d, d) and history-to-hidden weights B (N d, n_hidden)."""

    Config = CRBMConfig
    progress = Curve("recon_error", "reconstruction error (CD has no tractable objective)",
                     "squared error per frame")
    input_kind = "sequence"

    def __init__(self, data_dim: int, config: CRBMConfig):
        super().__init__(data_dim, config)
        d, nh, nu = data_dim, config.n_hidden, config.order * data_dim
        # initial weights come from torch's global RNG, which the pipeline seeds per run
        self.W = nn.Parameter(config.init_std * torch.randn(d, nh))
        self.A = nn.Parameter(config.init_std * torch.randn(nu, d))
        self.B = nn.Parameter(config.init_std * torch.randn(nu, nh))
        self.b = nn.Parameter(torch.zeros(d))
        self.c = nn.Parameter(torch.zeros(nh))

    # --- windows and dynamic biases ------------------------------------------------------
    def windows(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sequences (n, T, d) -> histories (n (T-N), N d) and frames (n (T-N), d).

        Row i (T-N) + j holds frame N + j of sequence i and the N frames before it."""
        if x.dim() != 3 or x.shape[2] != self.data_dim or x.shape[1] <= self.config.order:
            raise DataError(f"crbm needs sequences (n, T, {self.data_dim}) with T > order = "
                            f"{self.config.order}, got {tuple(x.shape)}")
        w = x.unfold(1, self.config.order + 1, 1).permute(0, 1, 3, 2)   # (n, T-N, N+1, d)
        return (w[:, :, :-1].reshape(-1, self.config.order * self.data_dim),
                w[:, :, -1].reshape(-1, self.data_dim))

    def dynamic_biases(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(b + A'u, c + B'u) for histories u (m, N d): (m, d), (m, n_hidden)."""
        return self.b + u @ self.A, self.c + u @ self.B

    # --- the conditional RBM -------------------------------------------------------------
    def free_energy(self, v: Tensor, bv: Tensor, bh: Tensor, W: Tensor | None = None) -> Tensor:
        """F(v | u) = -bv'v - sum_j softplus(bh_j + v'W_j) with dynamic biases; (m,)."""
        W = self.W if W is None else W
        return -(v * bv).sum(1) - F.softplus(v @ W + bh).sum(1)

    def gibbs(self, v: Tensor, bv: Tensor, bh: Tensor, steps: int,
              generator: torch.Generator, *, mean: bool = False) -> Tensor:
        """``steps`` rounds of v -> h -> v in the conditional RBM; with ``mean`` the last
        half-step returns P(v = 1 | h) instead of a sample."""
        for s in range(steps):
            h = bernoulli(torch.sigmoid(v @ self.W + bh), generator)
            p = torch.sigmoid(h @ self.W.T + bv)
            v = p if mean and s == steps - 1 else bernoulli(p, generator)
        return v

    # --- training ------------------------------------------------------------------------
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """CD-k on every window of the sequences x (B, T, d)."""
        u, v = self.windows(x)
        self.observe(v)
        with torch.no_grad():
            bv, bh = self.dynamic_biases(u)
            v_neg = self.gibbs(v, bv, bh, self.config.cd_k, generator)

        def gap():   # the same biases, now differentiable
            bv_, bh_ = self.dynamic_biases(u)
            return self.free_energy(v, bv_, bh_).mean() - self.free_energy(v_neg, bv_, bh_).mean()

        gap = self.descend(gap)
        with torch.no_grad():   # reconstruction: the updated W, the biases before the update
            recon = self.gibbs(v, bv, bh, 1, generator, mean=True)
        return {"recon_error": float(((v - recon) ** 2).sum(1).mean()),
                "free_energy_gap": float(gap)}

    # --- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def continue_sequences(self, context: Tensor, frames: int,
                           generator: torch.Generator) -> Tensor:
        """Generate ``frames`` new frames after context (n, T0 >= N, d): (n, frames, d).

        Each frame starts its Gibbs chain at the previous frame, runs ``gibbs_steps`` rounds
        and is a binary sample, fed back into the history."""
        n_ctx = self.config.order
        if context.dim() != 3 or context.shape[1] < n_ctx:
            raise DataError(f"context must be (n, T0 >= {n_ctx}, {self.data_dim}), "
                            f"got {tuple(context.shape)}")
        hist = list(context[:, -n_ctx:].unbind(1))
        out = []
        for _ in range(frames):
            bv, bh = self.dynamic_biases(torch.cat(hist[-n_ctx:], 1))
            v = self.gibbs(hist[-1], bv, bh, self.config.gibbs_steps, generator)
            out.append(v)
            hist.append(v)
        return torch.stack(out, 1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Last frames (n, d) of free-running sequences started from blank histories."""
        blank = torch.zeros(n, self.config.order, self.data_dim, device=self.W.device)
        return self.continue_sequences(blank, self.config.sample_frames, generator)[:, -1]

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def conditional_log_z(self, bv: Tensor, bh: Tensor, max_bits: int = 20) -> Tensor:
        """log Z(u) for dynamic biases (m, d), (m, n_hidden) by enumerating h: (m,) float64.

        log Z = log sum_h exp(bh'h + sum_i softplus(bv_i + W_i h)).  The d-term sums run in
        float32 (4x faster than float64 on CPU; relative error ~1e-6 of each term, tested
        against float64), the log-sum-exp over hidden states in float64."""
        W, bv, bh = self.W.float(), bv.float(), bh.float()
        nh, d = self.config.n_hidden, self.data_dim
        m_chunk = max(1, 2**22 // (2**min(nh, 14) * d))
        parts = []
        for s in range(0, bv.shape[0], m_chunk):
            bvs, bhs = bv[s:s + m_chunk], bh[s:s + m_chunk]

            def log_f(h: Tensor) -> Tensor:            # (S, m) for hidden states h (S, nh)
                h = h.float()
                return (h @ bhs.T + F.softplus((h @ W.T)[:, None] + bvs).sum(-1)).double()

            parts.append(enumerate_log_z(log_f, nh, max_bits=max_bits, device=W.device,
                                         chunk=max(1, 2**22 // (bvs.shape[0] * d))))
        return torch.cat(parts)

    @torch.no_grad()
    def conditional_log_z_ais(self, bv: Tensor, bh: Tensor, budget: Budget,
                              generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """AIS estimate of every log Z(u), budget.ais_chains chains each: (m,), stderrs (m,)."""
        path = DynamicBiasPath(self.W, bv, bh, self.base_rate_logits(), budget.ais_chains)
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        res = ais_log_z(path, betas, path.n_states, generator, desc="AIS crbm")
        per = [log_mean_exp_stderr(w) for w in res.log_weights.view(bv.shape[0], -1)]
        log_z = torch.tensor([p[0] for p in per], dtype=torch.float64) + path.base_log_z()
        return log_z, torch.tensor([p[1] for p in per], dtype=torch.float64)

    @torch.no_grad()
    def _conditional(self, x: Tensor, generator, budget, method: str) -> LogLikelihood:
        u, v = self.windows(x.to(self.W.dtype))
        bv, bh = self.dynamic_biases(u)
        neg_f = -self.free_energy(v.double(), bv.double(), bh.double(), self.W.double())
        n_pred = x.shape[1] - self.config.order
        info = {"predicted_frames_per_sequence": float(n_pred),
                "history_frames": float(self.config.order)}
        if method == "exact":
            log_z = self.conditional_log_z(bv, bh, budget.exact_max_bits).cpu()
            values = (neg_f.cpu() - log_z).view(-1, n_pred).mean(1)
            return LogLikelihood(values, "exact", "exact", info=info)
        chunk = max(1, budget.batch_size * 20 // budget.ais_chains)
        zs = [self.conditional_log_z_ais(bv[s:s + chunk], bh[s:s + chunk], budget, generator)
              for s in range(0, bv.shape[0], chunk)]
        log_z, se = torch.cat([z[0] for z in zs]), torch.cat([z[1] for z in zs])
        values = (neg_f.cpu() - log_z).view(-1, n_pred).mean(1)
        # each conditional has its own, independent AIS run: its error is part of the spread
        # of the per-sequence values (so in LogLikelihood.stderr), not shared between them
        info |= {"ais_chains": float(budget.ais_chains), "ais_betas": float(budget.ais_betas),
                 "mean_log_z_stderr": float(se.mean())}
        return LogLikelihood(values, "ais", "estimate", info=info)

    def per_example_cost(self, budget: Budget) -> bool:
        return self.config.n_hidden > budget.exact_max_bits   # AIS per conditional

    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Per sequence (n,): the MEAN over frames t = N..T-1 of log p(v_t | v_{t-N..t-1}),
        in nats per predicted frame.  Exact (enumerating 2^n_hidden hidden states per
        conditional) when n_hidden <= budget.exact_max_bits, else AIS per conditional.

        Every conditional has its own log Z(u_t), so the model has no single log Z
        (``exact_log_z`` and ``annealing_path`` give None) and this replaces the
        :class:`~gm.models.energy.base.EnergyModel` strategy."""
        exact = self.config.n_hidden <= budget.exact_max_bits
        return self._conditional(x, generator, budget, "exact" if exact else "ais")

    def validation_estimates(self, x, *, generator, budget):
        """AIS beside the exact value, on every conditional of x.  There are n (T - N)
        conditionals, each with its own log Z, so this runs a tenth of the budget's chains
        and betas per conditional (recorded in info) to cost about one AIS run per
        sequence batch rather than per frame."""
        if self.config.n_hidden > budget.exact_max_bits:
            return {}
        small = dataclasses.replace(budget, ais_chains=max(2, budget.ais_chains // 10),
                                    ais_betas=max(10, budget.ais_betas // 10))
        return {"ais": self._conditional(x, generator, small, "ais")}

    @torch.no_grad()
    def extras(self, x, *, generator, budget, classifier=None) -> Extras:
        """images["continuations"]: for the first budget.n_continuations test sequences, the
        true frames (T of them) then the same N context frames followed by T - N generated
        frames: (2 n_continuations T, d), two rows of T frames per sequence.
        metrics["continuation_pixel_error_1"/"_all"]: mean squared pixel error per frame of
        the first / all generated frames against the truth."""
        x = x[: budget.n_continuations].to(self.W.dtype)
        n_ctx, t = self.config.order, x.shape[1]
        gen = self.continue_sequences(x[:, :n_ctx], t - n_ctx, generator)
        err = ((gen - x[:, n_ctx:]) ** 2).sum(-1)         # (n, T-N)
        rows = torch.stack([x, torch.cat([x[:, :n_ctx], gen], 1)], 1)   # (n, 2, T, d)
        return Extras(metrics={"continuation_pixel_error_1": float(err[:, 0].mean()),
                               "continuation_pixel_error_all": float(err.mean())},
                      images={"continuations": rows.reshape(-1, self.data_dim).cpu()},
                      grid_cols={"continuations": t})


class DynamicBiasPath(BaseRatePath):
    """AIS path for many RBMs that share W but have their own biases (bv_m, bh_m), run
    together as ``chains`` chains per RBM (state (m chains, d), RBM-major order):

    p_beta(v) ∝ exp(((1-beta) b_A + beta bv)'v) prod_j (1 + exp(beta (bh_j + v'W_j))).

    beta = 0 is the base-rate model b_A = logit(frame mean), the same for every RBM, so one
    log Z_0 = n_hidden log 2 + sum_i softplus(b_A,i) serves all (Salakhutdinov & Murray 2008).
    """

    def __init__(self, W: Tensor, bv: Tensor, bh: Tensor, b_a: Tensor, chains: int):
        super().__init__(b_a)
        self.W = W.detach().double()
        self.bv = bv.detach().double().repeat_interleave(chains, 0)
        self.bh = bh.detach().double().repeat_interleave(chains, 0)
        self.n_states = self.bv.shape[0]

    def base_log_z(self) -> float:
        return float(self.W.shape[1] * math.log(2.0) + F.softplus(self.b_a).sum())

    def log_f(self, v: Tensor, beta: float) -> Tensor:
        return (((1 - beta) * self.b_a + beta * self.bv) * v).sum(1) \
            + F.softplus(beta * (v @ self.W + self.bh)).sum(1)

    def transition(self, v: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        h = bernoulli(torch.sigmoid(beta * (v @ self.W + self.bh)), generator)
        return bernoulli(torch.sigmoid((1 - beta) * self.b_a + beta * (self.bv + h @ self.W.T)),
                         generator)
