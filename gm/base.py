"""The interface every generative model honours, and what ``log_likelihood`` returns."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gm.config import require

Kind = Literal["exact", "estimate", "lower_bound", "upper_bound", "proxy"]
KINDS: tuple[str, ...] = ("exact", "estimate", "lower_bound", "upper_bound", "proxy")


@dataclass(frozen=True)
class Budget:
    """How much compute the likelihood estimators may spend (params.yaml ``evaluate:``).

    Each model reads the fields its estimator needs and ignores the rest.
    """

    exact_max_bits: int = 20        # enumerate at most 2**exact_max_bits states
    ais_chains: int = 100           # independent AIS runs (Salakhutdinov & Murray 2008)
    ais_betas: int = 1000           # intermediate distributions
    ais_schedule: Literal["linear", "sigmoid", "geometric"] = "sigmoid"
    importance_samples: int = 1000  # k of the IWAE / importance-sampling estimate
    parzen_samples: int = 10000     # samples of the Parzen-window proxy (Goodfellow et al. 2014)
    batch_size: int = 500           # test examples per evaluation batch

    def __post_init__(self):
        from gm.config import require
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool):
                require(v >= 1, f.name, f"must be >= 1, got {v}")


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
        n = self.values.numel()
        sample_var = float(self.values.var()) / n if n > 1 else 0.0
        return math.sqrt(sample_var + self.shared_stderr**2)

    @staticmethod
    def concat(parts: list["LogLikelihood"]) -> "LogLikelihood":
        """Join per-batch results of the same estimator (shared_stderr of the first)."""
        first = parts[0]
        return LogLikelihood(
            values=torch.cat([p.values for p in parts]), method=first.method, kind=first.kind,
            shared_stderr=first.shared_stderr,
            bounds={k: torch.cat([p.bounds[k] for p in parts]) for k in first.bounds},
            info=dict(first.info))


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

    def validation_estimates(self, x: Tensor, *, generator: torch.Generator,
                             budget: Budget) -> dict[str, LogLikelihood]:
        """Stochastic estimators run beside an exact ``log_likelihood`` on the same x, so the
        report can check them against the truth (estimator-validation table). Default: none."""
        return {}

    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        """Optional model-specific evaluation on test data x (e.g. inpainting, chains).

        classifier, when given, maps (n, data_dim) in data space to (n, n_classes) logits
        (the pipeline's own classifier of the dataset's labels)."""
        return Extras()

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Build the model's optimisers, by name; subclasses override (default: none)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers the model owns, by name (saved in checkpoints for exact resume).

        Built by :meth:`make_optimizers` on first use, so evaluation, which needs none, never
        pays torch.optim's import of torch._dynamo (~1.5 s of CPU per process)."""
        if "_optimizers" not in self.__dict__:
            self.__dict__["_optimizers"] = self.make_optimizers()
        return self.__dict__["_optimizers"]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
