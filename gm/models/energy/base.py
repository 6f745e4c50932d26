"""What every Boltzmann machine shares (book sections 20.1-20.7).

A Boltzmann machine defines p(x) = f(x) / Z with an unnormalised f(x) = sum_h exp(-E(x, h)).
:class:`EnergyModel` owns, once for the whole family:

- the base-rate model (:class:`~gm.models.base_rate.BaseRate`, the clipped training-data pixel
  means): the initial visible biases (Hinton 2010, "A practical guide to training RBMs",
  sec. 8.1), the start of persistent chains and samplers, and the tractable beta = 0 end of the
  AIS paths (Salakhutdinov & Murray 2008, sec. 4.2);
- the optimiser: SGD with momentum and L2 weight decay (Hinton 2010), and the pieces of a
  CD / PCD update (Hinton 2002; Tieleman 2008);
- the likelihood strategy: log p(x) = log f(x) - log Z, exact when log Z can be enumerated within
  ``budget.exact_max_bits``, else log Z by forward AIS (an estimate, in expectation an upper
  bound of log p(x)) with RAISE (Burda et al. 2015) as the lower side of a stochastic sandwich
  when ``budget.raise_chains > 0`` (a lower bound in expectation of the annealing model's
  log p_ann(x), not of log p(x): :data:`gm.estimators.raise_ais.SANDWICH_NOTE`); and the
  validation estimates run beside an exact value.  Every value resting on an AIS log Z or on
  RAISE is kind "estimate"; "lower_bound" only when log Z is exact.

A model provides only its math:

- :meth:`EnergyModel.log_f` (log f(x), or None when summing out its latent units is beyond the
  budget), :meth:`~gm.base.GenerativeModel.exact_log_z` and
  :meth:`~gm.base.GenerativeModel.annealing_path` (see :mod:`gm.estimators.ais`);
- :meth:`EnergyModel.raise_start`, how a reverse chain starts at a test example (default: at the
  example itself, latent units summed out);
- optionally a variational lower bound of log f(x) (:attr:`EnergyModel.variational_bound`), used
  when log f(x) cannot be enumerated (the DBM's mean field).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from gm.optim import SGD, Optimizer
from gm.base import Budget, GenerativeModel, LogLikelihood
from gm.config import Checked, ranged
from gm.errors import ConfigError
from gm.estimators.ais import AISResult, ais_log_z, beta_schedule
from gm.estimators.raise_ais import (StartFn, ais_sandwich, raise_log_likelihood,
                                     sandwich_estimates)
from gm.models.base_rate import BaseRate
from gm.ops import bernoulli


@dataclass(frozen=True)
class SGDConfig(Checked):
    """The optimiser fields of every Boltzmann machine: SGD with momentum and L2 weight decay
    (Hinton 2010), weights initialised from N(0, init_std^2)."""

    lr: float = ranged(0.05, gt=0)
    momentum: float = ranged(0.5, ge=0, lt=1)
    weight_decay: float = ranged(1e-4, ge=0)
    init_std: float = ranged(0.01, gt=0)


@dataclass(frozen=True)
class CDConfig(SGDConfig):
    """Training fields of the RBM family (rbm, grbm, conv_rbm, dbn): CD-k or PCD, Gibbs
    sampling for sample()."""

    cd_k: int = ranged(1, ge=1)
    persistent: bool = False      # PCD: negative chains carried across updates
    n_chains: int = ranged(100, ge=1)         # persistent chains (PCD only)
    sample_steps: int = ranged(1000, ge=1)    # Gibbs steps per sample() chain

    def cd_fields(self) -> dict:
        """The CDConfig fields of this config, by name (e.g. for a DBN's layer RBMs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(CDConfig)}


class EnergyModel(GenerativeModel):
    """Base of the Boltzmann machines: base rate, SGD, and log p(x) = log f(x) - log Z.

    Subclasses name their visible biases ``b`` (or override :meth:`observe`), implement
    ``gibbs(v, steps, generator)`` for the default :meth:`sample` and :meth:`pcd_chains`, and
    the likelihood hooks listed in the module docstring.
    """

    #: name of the model's variational lower bound of log f(x) (e.g. "mean_field"), or None
    variational_bound: ClassVar[str | None] = None

    def __init__(self, data_dim: int, config):
        super().__init__(data_dim, config)
        self.base_rate = BaseRate(data_dim)   # training-data pixel means

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- training --------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, Optimizer]:
        cfg = self.config
        return {"sgd": SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    def observe(self, x: Tensor) -> None:
        """Add training batch x (n, d) to the base rate; the first batch starts the visible
        biases ``b`` at its base-rate logits (Hinton 2010, sec. 8.1)."""
        self.base_rate.update(x, self.b)

    def base_rate_logits(self) -> Tensor:
        """b_A (d,) float64: logits of the base-rate means (rounded to the parameters' dtype),
        the visible biases at the start of the AIS paths."""
        p = self.base_rate.mean().to(self.dtype).double()
        return torch.log(p / (1 - p))

    def chain_start(self, n: int, generator: torch.Generator) -> Tensor:
        """n independent starts of a Gibbs chain: draws of the base-rate model, (n, d)."""
        return self.base_rate.sample(n, generator, dtype=self.dtype)

    def pcd_chains(self, x: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        """PCD's negative samples: the persistent chains (buffer ``chains``) moved ``steps``
        Gibbs steps on and kept.  Called under no_grad after :meth:`observe` (x); on the
        first update they start at :meth:`chain_start`."""
        if self.base_rate.first_batch:
            self.chains.copy_(self.chain_start(self.chains.shape[0], generator))
        v = self.gibbs(self.chains, steps, generator)
        self.chains.copy_(v)
        return v

    def free_energy_update(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One CD-k or PCD update by autograd on data x (n, d) in the model's space:
        negative samples from :meth:`pcd_chains` or from ``cd_k`` Gibbs steps started at x,
        then :meth:`descend` the free-energy gap mean F(x) - mean F(negative samples).
        Returns the gap."""
        cfg = self.config
        with torch.no_grad():
            if cfg.persistent:
                v_neg = self.pcd_chains(x, cfg.cd_k, generator)
            else:
                v_neg = self.gibbs(x, cfg.cd_k, generator)
        return self.descend(lambda: self.free_energy(x).mean() - self.free_energy(v_neg).mean())

    def descend(self, objective: Callable[[], Tensor]) -> Tensor:
        """One SGD step down the gradient of ``objective()``, e.g. the free-energy gap
        mean F(data) - mean F(negative samples), whose gradient is CD's / PCD's estimate of
        -d log p / d theta.  Returns the objective's value."""
        opt = self.optimizers()["sgd"]
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            value = objective()
            value.backward()
        opt.step()
        return value.detach()

    # --- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Gibbs chains from the base rate, ``config.sample_steps`` steps each."""
        return self.gibbs(self.chain_start(n, generator), self.config.sample_steps, generator)

    # --- what a model provides for its likelihood --------------------------------------------
    def log_f(self, x: Tensor, budget: Budget) -> Tensor | None:
        """log f(x) = log sum_h exp(-E(x, h)) of data x (n, d), float64 (n,); None when summing
        out the latent units would enumerate more than 2**budget.exact_max_bits states."""
        raise NotImplementedError

    def raise_start(self, path) -> StartFn:
        """How RAISE's reverse chains start at test examples (the copies x (n m, d), one per
        chain): the state at beta = 1 and its log w_start (see :mod:`gm.estimators.raise_ais`).

        Default: the chain state is the example itself (latent units summed out), in float64,
        so log w_start = log f_1(x)."""

        def start(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            v = x.double()
            return v, path.log_f(v, 1.0)

        return start

    def variational_log_f(self, x: Tensor) -> Tensor:
        """E_q[-E(x, h)] + H(q) <= log f(x), float64 (n,), for models that set
        :attr:`variational_bound`."""
        raise NotImplementedError

    # --- the likelihood strategy ------------------------------------------------------------
    @torch.no_grad()
    def log_z_ais(self, budget: Budget, generator: torch.Generator) -> AISResult:
        """Forward AIS estimate of log Z along :meth:`annealing_path` (Salakhutdinov & Murray
        2008): budget.ais_chains chains over budget.ais_betas distributions."""
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        return ais_log_z(self.annealing_path(), betas, budget.ais_chains, generator,
                         desc=f"AIS {self.name}")

    @torch.no_grad()
    def raise_log_px(self, x: Tensor, budget: Budget, generator: torch.Generator) -> Tensor:
        """RAISE per example, (n,): a stochastic lower bound of log p_ann(x), the annealing
        model's log-likelihood (Burda et al. 2015), so an estimate of log p(x) (it can exceed
        it when the annealing is short), budget.raise_chains reverse chains per example started
        by :meth:`raise_start`."""
        path = self.annealing_path()
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        return raise_log_likelihood(path, self.raise_start(path), x, budget.raise_chains, betas,
                                    generator, desc=f"RAISE {self.name}")

    @torch.no_grad()
    def ais_log_likelihood(self, x: Tensor, budget: Budget,
                           generator: torch.Generator) -> LogLikelihood:
        """log p(x) with log Z from forward AIS.

        log f(x) - log Z-hat: method "ais", kind "estimate" (consistent; in expectation an
        upper bound since Z-hat is unbiased), with bounds {"lower": RAISE, "upper": AIS} when
        budget.raise_chains > 0 (:data:`~gm.estimators.raise_ais.SANDWICH_NOTE`).  When log f(x)
        is beyond the budget: the model's variational bound of log f(x) minus log Z-hat, method
        "<bound>+ais", kind "estimate": a lower bound only if log Z were exact, and log Z-hat is
        biased low, so the value is biased high and can exceed log p(x) (tests/test_dbm.py);
        RAISE as bounds["lower"].
        """
        res = self.log_z_ais(budget, generator)
        lower = self.raise_log_px(x, budget, generator) if budget.raise_chains else None
        info = {"ais_chains": budget.ais_chains, "ais_betas": budget.ais_betas,
                "raise_chains": budget.raise_chains}
        log_z_info = {"log_z": res.log_z, "log_z_stderr": res.stderr}
        bound = None
        if self.variational_bound:
            bound = self.variational_log_f(x) - res.log_z
            info[f"{self.variational_bound}_bound"] = float(bound.mean())
        log_f = self.log_f(x, budget)
        if log_f is not None and lower is not None:
            return ais_sandwich(log_f, res, lower, info=info)
        if log_f is not None:
            return LogLikelihood(log_f - res.log_z, "ais", "estimate", shared_stderr=res.stderr,
                                 info={**log_z_info, **info})
        if bound is None:
            raise ConfigError("exact_max_bits", f"{self.name}: log f(x) needs more states than "
                              f"2**{budget.exact_max_bits}", "raise exact_max_bits")
        return LogLikelihood(bound, f"{self.variational_bound}+ais", "estimate",
                             shared_stderr=res.stderr,
                             bounds={} if lower is None else {"lower": lower},
                             info={**info, **log_z_info})

    def per_example_cost(self, budget: Budget) -> bool:
        return budget.raise_chains > 0  # RAISE: reverse chains per test example

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Exact log f(x) - log Z when log Z can be enumerated within the budget, else
        :meth:`ais_log_likelihood`."""
        log_z = self.exact_log_z(budget)
        if log_z is None:
            return self.ais_log_likelihood(x, budget, generator)
        return LogLikelihood(self.log_f(x, budget) - log_z, "exact", "exact",
                             info={"log_z": log_z})

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """Beside an exact log p(x): the AIS estimate (with its RAISE/AIS sandwich in
        ``bounds``), RAISE alone (kind "estimate": it bounds log p_ann(x), not log p(x)), and
        the variational bound with the exact log Z (kind "lower_bound": every ingredient exact
        or a bound)."""
        log_z = self.exact_log_z(budget)
        if log_z is None:
            return {}
        ais = self.ais_log_likelihood(x, budget, generator)
        out = sandwich_estimates(ais) if "lower" in ais.bounds else {"ais": ais}
        if self.variational_bound:
            out[self.variational_bound] = LogLikelihood(
                self.variational_log_f(x) - log_z, self.variational_bound, "lower_bound")
        return out


class BaseRatePath:
    """The beta = 0 end shared by the annealing paths of binary Boltzmann machines: visible
    units independent with the base-rate logits b_A (Salakhutdinov & Murray 2008, sec. 4.2)."""

    def __init__(self, b_a: Tensor):
        self.b_a = b_a

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws of the independent visible units, (n, d)."""
        return bernoulli(torch.sigmoid(self.b_a).expand(n, -1).contiguous(), generator)
