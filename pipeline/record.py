"""The record of one evaluation, ``results/<dataset>/<model>/seed<s>/eval.json``.

The evaluate stage writes an :class:`EvalRecord` and the report and its figures read it back
through the same definition (:meth:`EvalRecord.write`, :meth:`EvalRecord.read`), so a field is
named once.  The JSON layout is the ARCHITECTURE contract::

    {"dataset", "model", "seed", "data_view",
     "test_log_likelihood": {"mean", "stderr", "method", "kind", "n", "info"?},
     "log_likelihood_bounds"?: {"lower": {"mean", "stderr"}, "upper": {...}, "gap"},
     "estimator_validation"?: {name: {<estimate>, "reference_method", "reference_kind",
                                      "difference"}},
     "ais_convergence"?: {"exact_log_z", "points": [{"betas", "log_z", "stderr"}]},
     "extras": {"metrics", "tables", "images"}, "sample_metrics": {name: {"value", "ci_low",
     "ci_high", ...}}, "train_seconds", "eval_seconds", "n_parameters",
     "budget"?: {the resolved evaluate: settings}}

(``?``: absent when the run has none).  A malformed file raises :class:`RecordError` naming
the file and the key.

Beside it, ``per_example.npz`` (:func:`write_per_example`, :func:`read_per_example`) holds the
per-example test values behind ``test_log_likelihood``: ``test_log_likelihood`` (n,) float64
in test-split order, and ``lower``, ``upper`` (n,) when the estimator gave a sandwich.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gm.base import KINDS, Extras, LogLikelihood
from gm.errors import GmError
from gm.io import InputError, atomic_path, read_json, write_json


class RecordError(GmError):
    """An eval.json is not a record of this version; the message names the file and key."""


def _evaluate_command(path: Path) -> str:
    """``: python -m pipeline.evaluate ...`` for an eval.json at results/D/M/seedS/, else ""."""
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-2].startswith("seed") and parts[-2][4:].isdigit():
        return (f": python -m pipeline.evaluate --dataset {parts[-4]} --model {parts[-3]} "
                f"--seed {parts[-2][4:]}")
    return ""


def _check_keys(d: Any, where: str, required: tuple[str, ...],
                optional: tuple[str, ...] | None = (), sep: str = ".") -> Mapping:
    """``d`` checked to be a mapping with every ``required`` key and no key outside
    ``required + optional`` (``optional=None``: any other key allowed)."""
    if not isinstance(d, Mapping):
        raise RecordError(f"{where}: expected a mapping, got {type(d).__name__}")
    for key in required:
        if key not in d:
            raise RecordError(f"{where}{sep}{key}: missing")
    if optional is not None:
        for key in d:
            if key not in required and key not in optional:
                raise RecordError(f"{where}{sep}{key}: unknown key")
    return d


def _typed(value: Any, kind: type, where: str, *, optional: bool = False):
    """``value`` checked to be of ``kind`` (float accepts ints; None when ``optional``)."""
    if value is None and optional:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise RecordError(f"{where}: expected {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class Estimate:
    """One labelled value of log p(x) in nats per example: mean over ``n`` test examples, its
    standard error, the estimator (``method``) and what the value is (``kind``, one of
    :data:`gm.base.KINDS`); ``info``: the estimator's own numbers (e.g. log_z)."""

    mean: float
    stderr: float
    method: str
    kind: str
    n: int
    info: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RecordError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")

    @classmethod
    def of(cls, ll: LogLikelihood) -> "Estimate":
        return cls.from_dict(ll.summary())

    def to_dict(self) -> dict:
        out = {"mean": self.mean, "stderr": self.stderr, "method": self.method,
               "kind": self.kind, "n": self.n}
        if self.info:
            out["info"] = dict(self.info)
        return out

    FIELDS = ("mean", "stderr", "method", "kind", "n")

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "estimate") -> "Estimate":
        _check_keys(d, where, cls.FIELDS, ("info",))
        kind = _typed(d["kind"], str, f"{where}.kind")
        if kind not in KINDS:
            raise RecordError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        info = _check_keys(d.get("info") or {}, f"{where}.info", (), None)
        return cls(mean=_typed(d["mean"], float, f"{where}.mean"),
                   stderr=_typed(d["stderr"], float, f"{where}.stderr"),
                   method=_typed(d["method"], str, f"{where}.method"), kind=kind,
                   n=_typed(d["n"], int, f"{where}.n"),
                   info={k: _typed(v, float, f"{where}.info.{k}") for k, v in info.items()})


@dataclass(frozen=True)
class Side:
    """One side of a sandwich: mean over test examples and its standard error."""

    mean: float
    stderr: float

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "Side":
        _check_keys(d, where, ("mean", "stderr"))
        return cls(_typed(d["mean"], float, f"{where}.mean"),
                   _typed(d["stderr"], float, f"{where}.stderr"))


@dataclass(frozen=True)
class Bounds:
    """Stochastic lower (RAISE) and upper (forward AIS) bounds of log p(x); gap = upper - lower."""

    lower: Side
    upper: Side
    gap: float

    @classmethod
    def of(cls, ll: LogLikelihood) -> "Bounds | None":
        summary = ll.bounds_summary()
        return None if summary is None else cls.from_dict(summary)

    def to_dict(self) -> dict:
        return {"lower": {"mean": self.lower.mean, "stderr": self.lower.stderr},
                "upper": {"mean": self.upper.mean, "stderr": self.upper.stderr},
                "gap": self.gap}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "log_likelihood_bounds") -> "Bounds":
        _check_keys(d, where, ("lower", "upper", "gap"))
        return cls(Side.from_dict(d["lower"], f"{where}.lower"),
                   Side.from_dict(d["upper"], f"{where}.upper"),
                   _typed(d["gap"], float, f"{where}.gap"))


@dataclass(frozen=True)
class Validation:
    """A stochastic estimator run beside the headline ``log_likelihood`` on the same model and
    test data: its estimate, the reference's method and kind, and estimate - reference."""

    estimate: Estimate
    reference_method: str
    reference_kind: str
    difference: float

    @classmethod
    def of(cls, ll: LogLikelihood, reference: LogLikelihood) -> "Validation":
        """``ll`` scored the first n of the reference's examples (all of them, or a budget's
        ``test_subset``): the difference is taken on those n."""
        same = reference.values[:ll.values.numel()]
        return cls(Estimate.of(ll), reference.method, reference.kind,
                   ll.mean - float(same.mean()))

    def to_dict(self) -> dict:
        return self.estimate.to_dict() | {"reference_method": self.reference_method,
                                          "reference_kind": self.reference_kind,
                                          "difference": self.difference}

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "Validation":
        own = ("reference_method", "reference_kind", "difference")
        _check_keys(d, where, own + Estimate.FIELDS, ("info",))
        return cls(Estimate.from_dict({k: v for k, v in d.items() if k not in own}, where),
                   _typed(d["reference_method"], str, f"{where}.reference_method"),
                   _typed(d["reference_kind"], str, f"{where}.reference_kind"),
                   _typed(d["difference"], float, f"{where}.difference"))


@dataclass(frozen=True)
class AISPoint:
    """AIS log Z (and its stderr over chains) with ``betas`` intermediate distributions."""

    betas: int
    log_z: float
    stderr: float

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "AISPoint":
        _check_keys(d, where, ("betas", "log_z", "stderr"))
        return cls(_typed(d["betas"], int, f"{where}.betas"),
                   _typed(d["log_z"], float, f"{where}.log_z"),
                   _typed(d["stderr"], float, f"{where}.stderr"))


@dataclass(frozen=True)
class AISConvergence:
    """AIS log Z against the number of distributions; exact log Z when enumerable, else None."""

    exact_log_z: float | None
    points: tuple[AISPoint, ...]

    @property
    def reference(self) -> float:
        """The exact log Z, else the estimate with the most distributions."""
        return self.exact_log_z if self.exact_log_z is not None else self.points[-1].log_z

    def to_dict(self) -> dict:
        return {"exact_log_z": self.exact_log_z,
                "points": [{"betas": p.betas, "log_z": p.log_z, "stderr": p.stderr}
                           for p in self.points]}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "ais_convergence") -> "AISConvergence":
        _check_keys(d, where, ("exact_log_z", "points"))
        if not isinstance(d["points"], list):
            raise RecordError(f"{where}.points: expected a list")
        return cls(_typed(d["exact_log_z"], float, f"{where}.exact_log_z", optional=True),
                   tuple(AISPoint.from_dict(p, f"{where}.points[{i}]")
                         for i, p in enumerate(d["points"])))


@dataclass(frozen=True)
class ExtrasRecord:
    """A model's own evaluation output (:class:`gm.base.Extras`): its metrics, its tables
    (name -> rows) and the names of the ``extra_<name>.png`` grids beside eval.json."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    images: tuple[str, ...] = ()

    @classmethod
    def of(cls, extras: Extras) -> "ExtrasRecord":
        return cls({k: float(v) for k, v in extras.metrics.items()}, dict(extras.tables),
                   tuple(sorted(extras.images)))

    def to_dict(self) -> dict:
        return {"metrics": dict(self.metrics), "tables": dict(self.tables),
                "images": list(self.images)}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "extras") -> "ExtrasRecord":
        _check_keys(d, where, ("metrics", "tables", "images"))
        metrics = _check_keys(d["metrics"], f"{where}.metrics", (), None)
        if not isinstance(d["images"], list):
            raise RecordError(f"{where}.images: expected a list")
        return cls({k: _typed(v, float, f"{where}.metrics.{k}") for k, v in metrics.items()},
                   dict(_check_keys(d["tables"], f"{where}.tables", (), None)),
                   tuple(_typed(v, str, f"{where}.images") for v in d["images"]))


@dataclass(frozen=True)
class SampleMetric:
    """One sample-quality metric (:func:`gm.metrics.sample_metrics`): its value, bootstrap
    interval [ci_low, ci_high] and the metric's own details (se, level, n_boot, ci_method,
    better, space, n_samples, n_reference, kernel, ...)."""

    value: float
    ci_low: float
    ci_high: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high} \
            | self.details

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "SampleMetric":
        _check_keys(d, where, ("value", "ci_low", "ci_high"), None)
        return cls(_typed(d["value"], float, f"{where}.value"),
                   _typed(d["ci_low"], float, f"{where}.ci_low"),
                   _typed(d["ci_high"], float, f"{where}.ci_high"),
                   {k: v for k, v in d.items() if k not in ("value", "ci_low", "ci_high")})


def sample_metrics_from(d: Mapping, where: str = "sample_metrics") -> dict[str, SampleMetric]:
    """name -> :class:`SampleMetric` of a plain ``sample_metrics`` mapping (eval.json, or the
    reference row of reference.json)."""
    return {k: SampleMetric.from_dict(v, f"{where}.{k}")
            for k, v in _check_keys(d, where, (), None).items()}


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the train and evaluate stages (top-level keys in eval.json)."""

    train_seconds: float
    eval_seconds: float


@dataclass(frozen=True)
class EvalRecord:
    """Everything the evaluate stage measured on one (dataset, model, seed) run."""

    dataset: str
    model: str                   # the run name (a registered model or a variant)
    seed: int
    data_view: str               # "binary" or "real": results of other views are not compared
    test_log_likelihood: Estimate
    n_parameters: int
    timing: Timing
    log_likelihood_bounds: Bounds | None = None
    estimator_validation: dict[str, Validation] = field(default_factory=dict)
    ais_convergence: AISConvergence | None = None
    extras: ExtrasRecord = field(default_factory=ExtrasRecord)
    sample_metrics: dict[str, SampleMetric] = field(default_factory=dict)
    budget: dict[str, Any] | None = None   # the evaluate: settings it ran with (None: older run)
    fingerprint: dict[str, str] | None = None   # pipeline/provenance.py (None: older run)
    cost: dict[str, float] | None = None   # pipeline.common.process_cost (None: older run)

    def to_dict(self) -> dict:
        out = {"dataset": self.dataset, "model": self.model, "seed": self.seed,
               "data_view": self.data_view,
               "test_log_likelihood": self.test_log_likelihood.to_dict(),
               "n_parameters": self.n_parameters,
               "train_seconds": self.timing.train_seconds,
               "eval_seconds": self.timing.eval_seconds,
               "extras": self.extras.to_dict(),
               "sample_metrics": {k: m.to_dict() for k, m in self.sample_metrics.items()}}
        if self.log_likelihood_bounds is not None:
            out["log_likelihood_bounds"] = self.log_likelihood_bounds.to_dict()
        if self.estimator_validation:
            out["estimator_validation"] = {k: v.to_dict()
                                           for k, v in self.estimator_validation.items()}
        if self.ais_convergence is not None:
            out["ais_convergence"] = self.ais_convergence.to_dict()
        if self.budget is not None:
            out["budget"] = dict(self.budget)
        if self.fingerprint is not None:
            out["fingerprint"] = dict(self.fingerprint)
        if self.cost is not None:
            out["cost"] = dict(self.cost)
        return out

    REQUIRED = ("dataset", "model", "seed", "test_log_likelihood", "n_parameters",
                "train_seconds", "eval_seconds")
    OPTIONAL = ("data_view", "log_likelihood_bounds", "estimator_validation", "ais_convergence",
                "extras", "sample_metrics", "budget", "fingerprint", "cost")

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "eval.json") -> "EvalRecord":
        """The record of a plain eval.json mapping; NaN is refused in every number the report
        computes with (log-likelihood, its bounds, timings); RecordError names the key."""
        _check_keys(d, where, cls.REQUIRED, cls.OPTIONAL, sep=": ")
        at = lambda key: f"{where}: {key}"  # noqa: E731
        record = cls._from_dict(d, at)
        ll, b, t = record.test_log_likelihood, record.log_likelihood_bounds, record.timing
        numbers = {"test_log_likelihood.mean": ll.mean, "test_log_likelihood.stderr": ll.stderr,
                   "train_seconds": t.train_seconds, "eval_seconds": t.eval_seconds}
        if b is not None:
            numbers |= {"log_likelihood_bounds.lower.mean": b.lower.mean,
                        "log_likelihood_bounds.lower.stderr": b.lower.stderr,
                        "log_likelihood_bounds.upper.mean": b.upper.mean,
                        "log_likelihood_bounds.upper.stderr": b.upper.stderr,
                        "log_likelihood_bounds.gap": b.gap}
        for key, value in numbers.items():
            if math.isnan(value):
                raise RecordError(f"{at(key)}: NaN where a number is required")
        return record

    @classmethod
    def _from_dict(cls, d: Mapping, at) -> "EvalRecord":
        bounds, conv = d.get("log_likelihood_bounds"), d.get("ais_convergence")
        budget, fingerprint, cost = d.get("budget"), d.get("fingerprint"), d.get("cost")
        return cls(
            dataset=_typed(d["dataset"], str, at("dataset")),
            model=_typed(d["model"], str, at("model")),
            seed=_typed(d["seed"], int, at("seed")),
            data_view=_typed(d.get("data_view", "binary"), str, at("data_view")),
            test_log_likelihood=Estimate.from_dict(d["test_log_likelihood"],
                                                   at("test_log_likelihood")),
            n_parameters=_typed(d["n_parameters"], int, at("n_parameters")),
            timing=Timing(_typed(d["train_seconds"], float, at("train_seconds")),
                          _typed(d["eval_seconds"], float, at("eval_seconds"))),
            log_likelihood_bounds=None if bounds is None
            else Bounds.from_dict(bounds, at("log_likelihood_bounds")),
            estimator_validation={
                k: Validation.from_dict(v, at(f"estimator_validation.{k}"))
                for k, v in _check_keys(d.get("estimator_validation", {}),
                                        at("estimator_validation"), (), None).items()},
            ais_convergence=None if conv is None else AISConvergence.from_dict(
                conv, at("ais_convergence")),
            extras=ExtrasRecord.from_dict(d["extras"], at("extras")) if "extras" in d
            else ExtrasRecord(),
            sample_metrics=sample_metrics_from(d.get("sample_metrics", {}),
                                               at("sample_metrics")),
            budget=None if budget is None else dict(_check_keys(budget, at("budget"), (), None)),
            fingerprint=None if fingerprint is None
            else dict(_check_keys(fingerprint, at("fingerprint"), (), None)),
            cost=None if cost is None
            else {k: _typed(v, float, at(f"cost.{k}"))
                  for k, v in _check_keys(cost, at("cost"), (), None).items()})

    def write(self, path: Path) -> None:
        """Write eval.json atomically (a crash leaves the old file or none)."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: Path) -> "EvalRecord":
        """The record of an eval.json; a missing, invalid or malformed file (a missing key, a
        wrong type, NaN where a number is required) raises :class:`RecordError` with one line:
        ``<file>: <key>: <problem> (<fix>)``, the fix being to rerun that run's evaluation."""
        path = Path(path)
        rerun = "rerun the evaluate stage" + _evaluate_command(path)
        fix = "delete it and " + rerun
        try:
            data = read_json(path, fix, missing=rerun)
        except InputError as err:
            raise RecordError(str(err)) from None
        try:
            return cls.from_dict(data, str(path))
        except RecordError as err:
            raise RecordError(f"{err} ({fix})") from None


PER_EXAMPLE_ARRAYS = ("test_log_likelihood", "lower", "upper")
TEST_INDEX = "test_index"


def write_per_example(path: Path, ll: LogLikelihood) -> None:
    """Write ``ll``'s per-example values atomically: ``test_log_likelihood`` (n,) float64 =
    ``ll.values``, ``test_index`` (n,) int64 = their positions in the test split (the first n
    examples: a budget ``test_subset`` scores a prefix), plus ``lower`` and ``upper`` (n,) when
    ``ll.bounds`` holds them (other bounds are not part of the contract)."""
    arrays = {"test_log_likelihood": ll.values.double().cpu().numpy(),
              TEST_INDEX: np.arange(ll.values.numel(), dtype=np.int64)}
    arrays |= {k: ll.bounds[k].double().cpu().numpy() for k in ("lower", "upper")
               if k in ll.bounds}
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_per_example(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a per_example.npz (name -> (n,) float64; ``test_index`` (n,) int64,
    strictly increasing, arange(n) when the file predates it), checked; RecordError names the
    file and the problem."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RecordError(f"{path}: not a readable per_example.npz ({err}); rerun the "
                          "evaluate stage") from None
    if "test_log_likelihood" not in arrays:
        raise RecordError(f"{path}: test_log_likelihood: missing")
    n = arrays["test_log_likelihood"].shape
    index = arrays.pop(TEST_INDEX, None)
    if index is None:
        index = np.arange(n[0] if len(n) == 1 else 0, dtype=np.int64)
    if (index.dtype != np.int64 or index.shape != n or (index < 0).any()
            or (np.diff(index) <= 0).any()):
        raise RecordError(f"{path}: {TEST_INDEX}: expected increasing non-negative int64 of "
                          f"shape {n}, got {index.dtype} {index.shape}")
    for k, v in arrays.items():
        if k not in PER_EXAMPLE_ARRAYS:
            raise RecordError(f"{path}: {k}: unknown array")
        if v.dtype != np.float64 or v.ndim != 1 or v.shape != n:
            raise RecordError(f"{path}: {k}: expected float64 of shape {n}, got "
                              f"{v.dtype} {v.shape}")
    return arrays | {TEST_INDEX: index}
