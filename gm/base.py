"""The interface every generative model honours, and what ``log_likelihood`` returns."""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gm.config import Checked, ranged, require

Kind = Literal["exact", "estimate", "lower_bound", "upper_bound", "proxy"]
KINDS: tuple[str, ...] = typing.get_args(Kind)   # the one list of likelihood kinds


def mean_variance(values: Tensor) -> float:
    """Sampling variance of the mean of per-example values (n,): var / n, 0 for n < 2."""
    n = values.numel()
    return float(values.double().var()) / n if n > 1 else 0.0


def mean_stderr(values: Tensor) -> float:
    """Standard error of the mean of per-example values (n,): std / sqrt(n), 0 for n < 2."""
    return math.sqrt(mean_variance(values))


@dataclass(frozen=True)
class Budget(Checked):
    """Every evaluation setting of the estimators (params.yaml ``evaluate:``, merged with a
    model's ``models.<m>.evaluate:`` overrides).  Model configs hold only what shapes the model
    and its training, so changing a budget reruns evaluation, never training.

    Each model reads the fields its estimator needs and ignores the rest.
    """

    exact_max_bits: int = ranged(20, ge=1)     # enumerate at most 2**exact_max_bits states
    ais_chains: int = ranged(100, ge=1)        # independent AIS runs (Salakhutdinov & Murray 2008)
    ais_betas: int = ranged(1000, ge=1)        # intermediate distributions
    ais_schedule: Literal["linear", "sigmoid", "geometric"] = "sigmoid"
    raise_chains: int = ranged(5, ge=0)        # reverse-AIS chains per test example (Burda et
                                               # al. 2015); 0: forward AIS without the sandwich
    importance_samples: int = ranged(1000, ge=1)  # k of the IWAE / importance-sampling estimate
    decoder_ais_chains: int = ranged(4, ge=1)  # decoder AIS (Wu et al. 2017): chains per example
    decoder_ais_betas: int = ranged(100, ge=1)    # its intermediate distributions
    decoder_ais_leapfrog: int = ranged(5, ge=1)   # its leapfrog steps per HMC move
    parzen_samples: int = ranged(10000, ge=1)  # samples of the Parzen proxy (Goodfellow et al. 2014)
    parzen_sigma: float | None = ranged(None, gt=0)  # fixed Parzen width when none was chosen
                                               # on validation (None: two-fold cross-fit)
    ensemble_masks: int = ranged(0, ge=0)      # MADE: masks averaged at test time (0: all)
    bound_samples: int = ranged(4, ge=1)       # diffusion: draws of x_t per (example, t) of
                                               # its variational bound
    trajectory_samples: int = ranged(0, ge=0)  # diffusion: forward trajectories per example of
                                               # its importance-weighted bound (0: the bound above)
    exact_chunk: int = ranged(4096, ge=1)      # latent states per block of an exact enumeration
    n_continuations: int = ranged(6, ge=1)     # sequence models: test sequences continued
    batch_size: int = ranged(500, ge=1)        # test examples per evaluation batch
    test_subset: int = ranged(0, ge=0)         # the estimators whose cost is per test example
                                               # (RAISE, importance sampling, decoder AIS)
                                               # score the first test_subset test examples, a
                                               # fixed subset (0: all); see per_example_cost


@dataclass
class LogLikelihood:
    """Per-example log p(x) in nats (NOT negated), with how it was obtained.

    values: (n,) per-example log-likelihoods (or bounds / proxies, see ``kind``).
    method: the estimator, e.g. "exact", "ais", "raise", "iwae", "elbo", "parzen".
    kind:   "exact" | "estimate" | "lower_bound" | "upper_bound" | "proxy".
            A bound is never called an estimate; a proxy is never ranked against likelihoods.
    shared_stderr: standard error shared by every example (e.g. of an AIS log Z), added in
            quadrature to the sampling error of the mean over examples.
    bounds: extra per-example values, e.g. {"lower": (n,), "upper": (n,)} for an AIS sandwich.
    info:   plain numbers worth reporting (log Z, its stderr, chains, betas, ...).
    """

    values: Tensor
    method: str
    kind: Kind
    shared_stderr: float = 0.0
    bounds: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.values = self.values.detach().double().cpu().reshape(-1)
        self.bounds = {k: v.detach().double().cpu().reshape(-1) for k, v in self.bounds.items()}

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean`: over examples, plus :attr:`shared_stderr`."""
        return math.sqrt(mean_variance(self.values) + self.shared_stderr**2)

    def summary(self) -> dict:
        """Plain record: mean, stderr, method, kind, n and (if any) info."""
        out = {"mean": self.mean, "stderr": self.stderr, "method": self.method,
               "kind": self.kind, "n": int(self.values.numel())}
        if self.info:
            out["info"] = {k: float(v) for k, v in self.info.items()}
        return out

    def bounds_summary(self) -> dict | None:
        """{"lower": {mean, stderr}, "upper": {mean, stderr}, "gap"} when the estimator gave
        both sides of a sandwich, else None."""
        if not {"lower", "upper"} <= set(self.bounds):
            return None
        rec = {side: {"mean": float(self.bounds[side].mean()),
                      "stderr": mean_stderr(self.bounds[side])} for side in ("lower", "upper")}
        rec["gap"] = rec["upper"]["mean"] - rec["lower"]["mean"]
        return rec

    @staticmethod
    def concat(parts: list["LogLikelihood"]) -> "LogLikelihood":
        """Join per-batch results of the same estimator (shared_stderr of the first)."""
        first = parts[0]
        return LogLikelihood(
            values=torch.cat([p.values for p in parts]), method=first.method, kind=first.kind,
            shared_stderr=first.shared_stderr,
            bounds={k: torch.cat([p.bounds[k] for p in parts]) for k in first.bounds},
            info=dict(first.info))


@dataclass(frozen=True)
class Curve:
    """The training curve that shows a model's progress (the report's training-curves figure).

    metric: a key of the per-epoch means of ``fit_step``'s (or ``end_epoch``'s) diagnostics;
    label: what it is, for the axis (e.g. "negative ELBO"); unit: e.g. "nats per image" (empty
    when it has none); higher_is_better: the direction of progress.
    """

    metric: str
    label: str
    unit: str = ""
    higher_is_better: bool = False


@dataclass
class Extras:
    """Model-specific evaluation output shown in the report beside the common metrics.

    metrics: name -> number (e.g. "chain_quality_100": ...); images: name -> (n, data_dim)
    tensor in [0, 1] drawn as a grid (e.g. "inpainting", "continuations", "chain");
    tables: name -> list of row dicts (e.g. quality as a function of chain length);
    grid_cols: name -> images per row of that grid (default: a square grid).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    grid_cols: dict[str, int] = field(default_factory=dict)


DATA_VIEWS = ("binary", "real")


def check_data_view(view: str) -> None:
    """Validate a config's ``data_view`` field (for :class:`EitherView` models)."""
    require(view in DATA_VIEWS, "data_view", f"must be binary or real, got {view!r}")


class EitherView:
    """Mixin of models whose samples are pixel means in [0, 1], so they train on either the
    binary or the real-valued (grey-level) view of a dataset: ``input_kind`` is the config's
    ``data_view``.  The Parzen protocol of Goodfellow et al. 2014 uses the real view."""

    @property
    def input_kind(self) -> str:
        return self.config.data_view


class GenerativeModel(nn.Module):
    """Base class of every model in the registry.

    Subclasses set ``Config`` (a frozen dataclass, see :mod:`gm.config`) and
    ``input_kind`` ("binary" or "real"), build themselves in ``__init__(data_dim, config)``
    and own their optimisers.  Data tensors are (batch, data_dim) in data space unless the
    model declares ``input_kind = "sequence"`` ((batch, T, data_dim)).
    """

    Config: ClassVar[type]
    input_kind: ClassVar[str] = "binary"
    name: ClassVar[str] = ""
    progress: ClassVar[Curve | None] = None   # every registered model declares its curve
    is_baseline: ClassVar[bool] = False       # a reference model (independent pixels, ...)

    def __init__(self, data_dim: int, config):
        super().__init__()
        self.data_dim = data_dim
        self.config = config

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is not None:
            return p.device
        b = next(self.buffers(), None)
        return b.device if b is not None else torch.device("cpu")

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """One update on minibatch ``x`` (batch, data_dim); returns scalar diagnostics."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Hook called after every epoch (e.g. a greedy layer schedule); returns metrics."""
        return {}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Draw ``n`` samples, shape (n, data_dim), in data space."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Per-example log p(x) (or a labelled bound/proxy) for x of shape (n, data_dim)."""
        raise NotImplementedError

    def per_example_cost(self, budget: Budget) -> bool:
        """Whether ``log_likelihood`` at this budget runs an estimator whose cost grows per
        test example (RAISE, importance sampling, decoder AIS): then evaluation scores the
        first ``budget.test_subset`` test examples only (0: all).  Default: False."""
        return False

    def prepare_evaluation(self, x_val: Tensor, *, generator: torch.Generator,
                           budget: Budget) -> None:
        """Called by evaluation once before ``log_likelihood`` with validation data x_val
        (n, data_dim), e.g. to choose a Parzen bandwidth on it.  Default: nothing."""

    def annealing_path(self):
        """The AIS annealing path from a tractable base to this model (an object with
        ``base_log_z``, ``base_sample``, ``log_f``, ``transition``, see
        :mod:`gm.estimators.ais`), or None for a model not scored by AIS."""
        return None

    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z by enumeration when at most 2**budget.exact_max_bits states are summed,
        else (and for models without a partition function) None."""
        return None

    def validation_estimates(self, x: Tensor, *, generator: torch.Generator,
                             budget: Budget) -> dict[str, LogLikelihood]:
        """Stochastic estimators run beside an exact ``log_likelihood`` on the first n examples
        of its x (x itself, or the first ``budget.test_subset`` test examples), so the report
        can check them against the truth (estimator-validation table). Default: none."""
        return {}

    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        """Optional model-specific evaluation on test data x (e.g. inpainting, chains).

        classifier, when given, maps (n, data_dim) in data space to (n, n_classes) logits
        (the pipeline's own classifier of the dataset's labels)."""
        return Extras()

    def make_optimizers(self) -> dict[str, "gm.optim.Optimizer"]:
        """Build the model's optimisers, by name; subclasses override (default: none)."""
        return {}

    def optimizers(self) -> dict[str, "gm.optim.Optimizer"]:
        """The optimisers the model owns, by name (saved in checkpoints for exact resume).

        Built by :meth:`make_optimizers` on first use, so evaluation, which needs none, never
        pays for them."""
        if "_optimizers" not in self.__dict__:
            self.__dict__["_optimizers"] = self.make_optimizers()
        return self.__dict__["_optimizers"]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
