"""Mixtures of multivariate Bernoullis fitted by EM (Bishop 2006, PRML sec. 9.3.3).

p(x) = sum_k pi_k prod_j mu_kj^x_j (1 - mu_kj)^(1 - x_j), x in {0, 1}^d, so log p(x) is exact
(a logsumexp over K components).  One model holds several *candidate* mixtures (component
counts K, random restarts), fitted side by side; evaluation picks one on validation data.

Training is batch EM spread over the pipeline's epochs: during an epoch ``fit_step`` adds the
E-step statistics of each minibatch under the current parameters (responsibility sums
N_k = sum_n r_nk, S_kj = sum_n r_nk x_nj, the data sums and the log-likelihood), and
``end_epoch`` does the M-step.  So epoch e ends with e EM iterations over the whole training
set, for any batch size, the model never stores the data, and a checkpoint between epochs
(parameters and empty statistics, all buffers) resumes exactly.  The first epoch replaces the
E-step by a random hard assignment of every example to a component (drawn from the training
generator): the initialisation.

M-step: the MAP estimate under priors that keep every probability inside (0, 1),
  m_j   = (S_j + c) / (N + 2c)               pixel means, Beta(1 + c, 1 + c) prior (c = 1:
                                             Laplace's rule of succession)
  mu_kj = (S_kj + a m_j) / (N_k + a)         Beta(1 + a m_j, 1 + a (1 - m_j)) prior: a
                                             pseudo-examples at the pixel means
  pi_k  = (N_k + b) / (N + K b)              Dirichlet(1 + b) prior on the weights,
so each iteration never decreases log p(data) + log prior (Dempster et al. 1977; MAP EM,
Bishop sec. 9.3.2/9.4); with fixed binarisation the per-epoch training log-likelihood is the
value at the start of the epoch's E-step.  Under dynamic binarisation every epoch sees a fresh
binarisation (a stochastic EM).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from gm.base import Budget, Curve, Extras, GenerativeModel, LogLikelihood
from gm.ops import bernoulli


class BernoulliMixtures(GenerativeModel):
    """Candidate mixtures (K, restart) fitted by EM in parallel; one is used for evaluation.

    Buffers (all in checkpoints): ``means`` (C, d) float64 and ``log_weights`` (C,) of all
    C = sum of candidate sizes components, candidate c in rows offsets[c]:offsets[c] + K_c;
    ``pixel_means`` m (d,) of the last M-step (0.5 before any); ``iterations`` () M-steps
    done; the epoch's E-step statistics ``stat_n`` (), ``stat_x`` (d,), ``stat_r`` (C,),
    ``stat_rx`` (C, d), ``stat_ll`` (n_candidates,) (zero between epochs); ``validation``
    (n_candidates,) mean validation log-likelihoods (NaN before :meth:`prepare_evaluation`)
    and ``chosen`` () the candidate in use (-1: none chosen yet, then the last candidate,
    the largest K, is used).

    Subclasses pass ``sizes`` (K per candidate, restarts as repeated entries) and the priors:
    ``pseudocount`` c of the pixel means, ``prior_strength`` a (None: every component's
    means are the pixel means m, the independent model) and ``weight_pseudocount`` b.
    """

    input_kind: ClassVar[str] = "binary"
    is_baseline: ClassVar[bool] = True
    progress: ClassVar[Curve] = Curve("nll", "training negative log-likelihood (at the start "
                                      "of the epoch's EM iteration)", "nats per image")

    def __init__(self, data_dim: int, config, sizes: list[int], *, pseudocount: float,
                 prior_strength: float | None, weight_pseudocount: float):
        super().__init__(data_dim, config)
        self.sizes = list(sizes)
        self.offsets = [0]
        for k in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + k)
        self.c, self.a, self.b = pseudocount, prior_strength, weight_pseudocount
        n_comp, n_cand = sum(self.sizes), len(self.sizes)
        f64 = dict(dtype=torch.float64)
        seg = torch.repeat_interleave(torch.arange(n_cand), torch.tensor(self.sizes))
        self.register_buffer("segment", seg, persistent=False)      # candidate of a component
        self.register_buffer("means", torch.full((n_comp, data_dim), 0.5, **f64))
        self.register_buffer("log_weights", -torch.tensor(self.sizes, **f64).log()[seg])
        self.register_buffer("pixel_means", torch.full((data_dim,), 0.5, **f64))  # m
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))
        self.register_buffer("stat_n", torch.zeros((), **f64))
        self.register_buffer("stat_x", torch.zeros(data_dim, **f64))
        self.register_buffer("stat_r", torch.zeros(n_comp, **f64))
        self.register_buffer("stat_rx", torch.zeros(n_comp, data_dim, **f64))
        self.register_buffer("stat_ll", torch.zeros(n_cand, **f64))
        self.register_buffer("validation", torch.full((n_cand,), math.nan, **f64))
        self.register_buffer("chosen", torch.full((), -1, dtype=torch.long))

    # --- densities ---------------------------------------------------------------------------
    def component_log_probs(self, x: Tensor, rows: slice = slice(None)) -> Tensor:
        """log pi_k + log p(x | k) for components ``rows``: (n, d) -> (n, C_rows) float64."""
        mu = self.means[rows]
        log1m = torch.log1p(-mu)
        return x.double() @ (torch.log(mu) - log1m).T + log1m.sum(1) + self.log_weights[rows]

    def candidate_log_probs(self, x: Tensor) -> Tensor:
        """Exact log p(x) under every candidate mixture, (n, d) -> (n, n_candidates)."""
        return self._logsumexp_per_candidate(self.component_log_probs(x))

    def _logsumexp_per_candidate(self, lp: Tensor) -> Tensor:
        """(n, C) component terms -> (n, n_candidates) logsumexp over each candidate's."""
        return torch.stack([torch.logsumexp(lp[:, o:o + k], 1)
                            for o, k in zip(self.offsets, self.sizes)], 1)

    def log_prior(self) -> Tensor:
        """log of the priors of every candidate at the current parameters, up to a constant,
        centred at the pixel means m of the last M-step, (n_candidates,).  With
        :meth:`candidate_log_probs` summed over the training data: the objective that each EM
        iteration never decreases."""
        per_comp = self.b * self.log_weights if self.b > 0 else torch.zeros_like(self.log_weights)
        if self.a is not None:
            m = self.pixel_means
            per_comp = per_comp + (self.a * m * torch.log(self.means)
                                   + self.a * (1 - m) * torch.log1p(-self.means)).sum(1)
        return torch.zeros(len(self.sizes), dtype=torch.float64,
                           device=per_comp.device).index_add_(0, self.segment, per_comp)

    @property
    def current(self) -> int:
        """Index of the candidate in use: the one chosen on validation, else the last."""
        c = int(self.chosen)
        return c if c >= 0 else len(self.sizes) - 1

    def _rows(self, c: int) -> slice:
        return slice(self.offsets[c], self.offsets[c] + self.sizes[c])

    # --- training ----------------------------------------------------------------------------
    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """Add minibatch x's E-step statistics (the first epoch: a random hard assignment)."""
        x = x.double()
        lp = self.component_log_probs(x)
        ll = self._logsumexp_per_candidate(lp)
        if int(self.iterations) == 0:
            r = torch.zeros_like(lp)
            for o, k in zip(self.offsets, self.sizes):
                z = torch.randint(k, (x.shape[0],), generator=generator,
                                  device=generator.device).to(x.device)
                r[torch.arange(x.shape[0], device=x.device), o + z] = 1.0
        else:
            r = torch.exp(lp - ll[:, self.segment])
        self.stat_n += x.shape[0]
        self.stat_x += x.sum(0)
        self.stat_r += r.sum(0)
        self.stat_rx += r.T @ x
        self.stat_ll += ll.sum(0)
        return {}

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict[str, float]:
        """M-step from the epoch's statistics, then reset them.  Returns the epoch's mean
        training NLL per candidate size ("nll_k<K>", best restart) and "nll", the best."""
        if float(self.stat_n) == 0:
            return {}
        nll = -self.stat_ll / self.stat_n
        out = {f"nll_k{k}": float(min(nll[i] for i, kk in enumerate(self.sizes) if kk == k))
               for k in sorted(set(self.sizes))}
        out["nll"] = float(nll.min())
        n = self.stat_n
        m = (self.stat_x + self.c) / (n + 2 * self.c)
        self.pixel_means.copy_(m)
        if self.a is None:
            self.means.copy_(m.expand_as(self.means))
        else:
            self.means.copy_((self.stat_rx + self.a * m) / (self.stat_r[:, None] + self.a))
        k = torch.tensor(self.sizes, dtype=torch.float64, device=n.device)[self.segment]
        self.log_weights.copy_(torch.log((self.stat_r + self.b) / (n + k * self.b)))
        self.iterations += 1
        for s in (self.stat_n, self.stat_x, self.stat_r, self.stat_rx, self.stat_ll):
            s.zero_()
        return out

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_evaluation(self, x_val: Tensor, *, generator: torch.Generator,
                           budget: Budget) -> None:
        """Choose the candidate (K, restart) with the best mean log-likelihood of the
        validation data x_val (n, d); the test split is never seen here."""
        total = torch.zeros(len(self.sizes), dtype=torch.float64, device=self.means.device)
        for i in range(0, x_val.shape[0], budget.batch_size):
            total += self.candidate_log_probs(x_val[i:i + budget.batch_size]).sum(0)
        self.validation.copy_(total / x_val.shape[0])
        self.chosen.fill_(int(torch.argmax(self.validation)))

    def choice_info(self) -> dict[str, float]:
        """The candidate in use: "components" K, "restart" and, once chosen on validation data,
        its "validation_log_likelihood" and the best validation value per K
        ("validation_ll_k<K>")."""
        c = self.current
        info = {"components": float(self.sizes[c]),
                "restart": float(sum(1 for k in self.sizes[:c] if k == self.sizes[c]))}
        if int(self.chosen) >= 0:
            info["validation_log_likelihood"] = float(self.validation[c])
        if int(self.chosen) >= 0 and len(self.sizes) > 1:
            for k in sorted(set(self.sizes)):
                info[f"validation_ll_k{k}"] = float(max(
                    self.validation[i] for i, kk in enumerate(self.sizes) if kk == k))
        return info

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Exact log p(x) of the candidate in use (logsumexp over its K components)."""
        rows = self._rows(self.current)
        values = torch.cat([torch.logsumexp(self.component_log_probs(x[i:i + budget.batch_size],
                                                                     rows), 1)
                            for i in range(0, x.shape[0], budget.batch_size)])
        return LogLikelihood(values, "exact", "exact", info=self.choice_info())

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Ancestral sampling: k ~ pi, then x_j ~ Bernoulli(mu_kj); (n, d) float32 0/1."""
        rows = self._rows(self.current)
        w = self.log_weights[rows].exp()
        k = torch.multinomial(w.to(generator.device), n, replacement=True, generator=generator)
        mu = self.means[rows][k.to(self.means.device)].float()
        return bernoulli(mu, generator)

    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        """metrics: :meth:`choice_info`; images: "components", the pixel means of the
        mixture in use, heaviest first (at most 100)."""
        rows = self._rows(self.current)
        order = torch.argsort(self.log_weights[rows], descending=True)[:100]
        return Extras(metrics=self.choice_info(),
                      images={"components": self.means[rows][order].float()})

    def n_parameters(self) -> int:
        """Free parameters of the mixture in use: K d means and K - 1 weights."""
        k = self.sizes[self.current]
        return k * self.data_dim + k - 1
