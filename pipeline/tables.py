"""The report's per-dataset tables, as DataFrames of display strings.

One table per (data view, comparability group): log-likelihoods (exact values and estimates),
lower bounds, upper bounds and proxies never share a table, and densities of the real view
never share one with probabilities of the binary view.  Values are nats per image (per frame
for conditional models) with bits per dimension beside them; intervals are printed
[low, high]; ranks come from paired comparisons (:mod:`pipeline.compare`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.compare import GROUPS
from pipeline.legend import FEATURE_METRICS, PIXEL_METRICS
from pipeline.record import Bounds, EvalRecord, SampleMetric

DASH = "—"
GROUP_ORDER = ("likelihood", "lower bound", "upper bound", "proxy")
VIEW_ORDER = ("binary", "real", "sequence")
LEVEL = 0.95


@dataclass(frozen=True)
class DatasetInfo:
    """What the tables need to know of a dataset: pixels per image (per frame for sequences),
    grey levels of its real view (0: none), and the best possible average log p(x) when known
    (bars and stripes: -log 30)."""

    data_dim: int
    levels: int = 0
    optimum: float | None = None


@dataclass
class Summary:
    """One (dataset, model) over its seeds: per-seed test means and what labels them."""

    dataset: str
    model: str
    view: str
    method: str
    kind: str
    seeds: list[int]
    values: np.ndarray                 # (S,) per-seed mean test values, nats
    stderr: float                      # mean over seeds of the within-run standard error
    n_parameters: int
    train_seconds: float
    baseline: bool = False
    bounds: list[Bounds] = field(default_factory=list)
    metrics: list[dict[str, SampleMetric]] = field(default_factory=list)

    @property
    def group(self) -> str:
        return GROUPS[self.kind]

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    def interval(self, level: float = LEVEL) -> tuple[float, float] | None:
        """t-interval of the mean across seeds (None for one seed)."""
        s = len(self.values)
        if s < 2:
            return None
        half = stats.t.ppf(0.5 + level / 2, s - 1) * self.values.std(ddof=1) / math.sqrt(s)
        return self.mean - half, self.mean + half


def summarise(evals: list[EvalRecord], baseline: dict[str, bool]) -> list[Summary]:
    """One :class:`Summary` per (dataset, model), in (dataset, model) order.  ``baseline``:
    run name -> whether its model is a reference baseline."""
    by: dict[tuple[str, str], list[EvalRecord]] = {}
    for e in sorted(evals, key=lambda e: (e.dataset, e.model, e.seed)):
        by.setdefault((e.dataset, e.model), []).append(e)
    out = []
    for (ds, model), es in by.items():
        ll = es[0].test_log_likelihood
        out.append(Summary(
            dataset=ds, model=model, view=es[0].data_view, method=ll.method, kind=ll.kind,
            seeds=[e.seed for e in es],
            values=np.array([e.test_log_likelihood.mean for e in es]),
            stderr=float(np.mean([e.test_log_likelihood.stderr for e in es])),
            n_parameters=int(es[0].n_parameters),
            train_seconds=float(np.mean([e.timing.train_seconds for e in es])),
            baseline=baseline.get(model, False),
            bounds=[e.log_likelihood_bounds for e in es if e.log_likelihood_bounds is not None],
            metrics=[e.sample_metrics for e in es]))
    return out


def bits_per_dim(value: float, info: DatasetInfo, view: str) -> float:
    """-log2 p / d.  On the real view (a density of dequantised grey levels (k + u) / L) the
    probability of the grey levels is at least about p(x) / L^d (Theis et al. 2016, sec.
    3.1), so its bits/dim are at most (d ln L - log p) / (d ln 2)."""
    offset = info.data_dim * math.log(info.levels) if view == "real" and info.levels else 0.0
    return (offset - value) / (info.data_dim * math.log(2))


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table cell; empty for a missing or non-finite value."""
    return "" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt_interval(iv: tuple[float, float] | None, digits: int = 3) -> str:
    """'[low, high]', or DASH for no interval (one seed) or a non-finite one."""
    if iv is None or not all(math.isfinite(v) for v in iv):
        return DASH
    return f"[{fmt(iv[0], digits)}, {fmt(iv[1], digits)}]"


def optimum_label(optimum: float) -> str:
    """'optimum (-log 30)' when exp(-optimum) is a whole number of equally likely patterns."""
    count = math.exp(-optimum)
    return f"optimum (-log {count:.0f})" if abs(count - round(count)) < 1e-6 else "optimum"


def model_label(s: Summary) -> str:
    return f"{s.model} (baseline)" if s.baseline else s.model


VALUE_HEADER = {
    "likelihood": "log p(x) [nats/image]",
    "lower bound": "lower bound [nats/image]",
    "upper bound": "upper bound [nats/image]",
    "proxy": "proxy score [nats/image]",
}


def value_header(group: str, view: str) -> str:
    if view == "sequence":
        return VALUE_HEADER[group].replace("log p(x)", "log p(x_t | x_<t)") \
            .replace("nats/image", "nats/frame")
    return VALUE_HEADER[group]


def bpd_header(view: str) -> str:
    return "bits/dim (grey levels, at most)" if view == "real" else "bits/dim"


def value_table(rows: list[Summary], group: str, view: str, info: DatasetInfo,
                rank: dict[str, int]) -> pd.DataFrame:
    """Rows of one (view, group), sorted by rank (shared ranks: not significantly different),
    then by value; a model without per-example values is unranked (rank DASH, last).  The
    binary-view likelihood table of a dataset with a known optimum starts with it."""
    ordered = sorted(rows, key=lambda s: (s.model not in rank, rank.get(s.model, 0), -s.mean))
    value_col, bpd_col = value_header(group, view), bpd_header(view)
    proxy = group == "proxy"           # a Parzen window is a density, not a probability
    out = []
    if group == "likelihood" and view == "binary" and info.optimum is not None:
        out.append({"rank": DASH, "model": optimum_label(info.optimum),
                    value_col: fmt(info.optimum), "95% CI across seeds": DASH,
                    bpd_col: fmt(bits_per_dim(info.optimum, info, view)),
                    "estimator": "exact", "kind": "exact", "seeds": DASH,
                    "parameters": DASH, "train [s]": DASH})
    for s in ordered:
        row = {"rank": str(rank[s.model]) if s.model in rank else DASH,
               "model": model_label(s), value_col: fmt(s.mean),
               "95% CI across seeds": fmt_interval(s.interval())}
        if not proxy:
            row[bpd_col] = fmt(bits_per_dim(s.mean, info, view))
        row |= {"estimator": s.method, "kind": s.kind.replace("_", " "),
                "seeds": str(len(s.seeds)), "parameters": str(s.n_parameters),
                "train [s]": fmt(s.train_seconds, 1)}
        out.append(row)
    return pd.DataFrame(out)


def bracket_table(rows: list[Summary]) -> pd.DataFrame:
    """The AIS sandwich of each model that has one: [lower (RAISE), upper (AIS)], means over
    seeds, the gap, and the headline value beside it."""
    out = []
    for s in rows:
        if not s.bounds:
            continue
        lo = float(np.mean([b.lower.mean for b in s.bounds]))
        hi = float(np.mean([b.upper.mean for b in s.bounds]))
        out.append({"model": model_label(s), "view": s.view,
                    "bracket [RAISE, AIS] [nats/image]": f"[{fmt(lo)}, {fmt(hi)}]",
                    "gap [nats]": fmt(hi - lo), "headline": fmt(s.mean),
                    "headline estimator": f"{s.method} ({s.kind.replace('_', ' ')})",
                    "seeds": str(len(s.bounds))})
    return pd.DataFrame(out)


def metric_cell(ms: list[SampleMetric]) -> str:
    """'value [low, high]': means over seeds of the value and of its bootstrap interval."""
    if not ms:
        return ""
    v, lo, hi = (float(np.mean([getattr(m, k) for m in ms])) for k in ("value", "ci_low",
                                                                       "ci_high"))
    return f"{v:.3g} [{lo:.3g}, {hi:.3g}]"


def quality_tables(rows: list[Summary], reference: dict[str, SampleMetric] | None
                   ) -> list[tuple[str, pd.DataFrame]]:
    """(space, table) of the sample metrics of one view: feature-space metrics and pixel-space
    metrics apart (so each table fits the page), the reference row first, then models by
    name.  Metrics that no row has are left out; a space with no metric gives no table."""
    tables = []
    for space, names in (("features", FEATURE_METRICS), ("pixels", PIXEL_METRICS)):
        present = [n for n in names if any(n in m for s in rows for m in s.metrics)
                   or (reference is not None and n in reference)]
        if not present:
            continue
        out = []
        if reference is not None:
            out.append({"model": "reference (held-out data)"}
                       | {n: metric_cell([reference[n]] if n in reference else [])
                          for n in present})
        for s in sorted(rows, key=lambda s: s.model):
            if any(s.metrics):
                out.append({"model": model_label(s)}
                           | {n: metric_cell([m[n] for m in s.metrics if n in m])
                              for n in present})
        tables.append((space, pd.DataFrame(out)))
    return tables


def significant_pairs(models: list[str], better: dict[str, list[str]]) -> str:
    """'a > b, c; d > e' in the given (rank) order, or a sentence when nothing is significant."""
    parts = [f"{m} > {', '.join(sorted(better[m]))}" for m in models if better.get(m)]
    return "; ".join(parts) if parts else "no difference is significant"
