"""The report's per-dataset tables, as DataFrames of display strings.

One table per (data view, comparability group): log-likelihoods (exact values and estimates),
lower bounds, upper bounds and proxies never share a table, and densities of the real view
never share one with probabilities of the binary view.  Values are nats per image (per frame
for conditional models) with bits per dimension beside them; intervals are printed
[low, high]; ranks come from paired comparisons (:mod:`pipeline.compare`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import stdtrit   # Student's t quantile (scipy.stats costs 0.5 s to import)

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
        half = stdtrit(s - 1, 0.5 + level / 2) * self.values.std(ddof=1) / math.sqrt(s)
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


CONVERGENCE_NOTE = (
    "AIS's log Z-hat is below log Z in expectation, by less as the number of intermediate "
    "distributions grows (Jensen's inequality; Neal 2001). So a model whose log Z still moves by "
    "more than its noise between its two runs with the most distributions (the reported run "
    "among them, each run independent) has not converged: its log Z-hat is likely too low and "
    "its AIS log-likelihood (log f - log Z-hat) too high, by an amount these runs cannot tell. "
    "The standard errors are delta-method errors over chains, which understate the spread of "
    "heavy-tailed weights. Models with an exact log Z are checked against it in the figure.")


def convergence_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and seed without an exact log Z (rows of :func:`pipeline.plots.ais_frame`):
    log Z of its two AIS runs with the most distributions, the change between them, the
    standard error of that change, and whether the change is within 2 of them."""
    out = []
    if frame.empty:
        return pd.DataFrame(out)
    for (model, seed), rows in frame[~frame["exact"]].groupby(["model", "seed"], sort=True):
        if len(rows) < 2:
            continue
        prev, last = rows.sort_values("betas").iloc[-2:].itertuples()
        change, se = last.log_z - prev.log_z, math.hypot(prev.stderr, last.stderr)
        out.append({"model": model, "seed": str(seed),
                    "distributions": f"{prev.betas:,} -> {last.betas:,}"
                                     + (" (reported)" if last.reported else ""),
                    "log Z": f"{fmt(prev.log_z)} -> {fmt(last.log_z)}",
                    "change [nats]": f"{last.log_z - prev.log_z:+.3f}",
                    "stderr of the change": fmt(se),
                    "within 2 stderr": DASH if not math.isfinite(se)
                                       else "yes" if abs(change) <= 2 * se else "no"})
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


# --- run facts and costs (every report) ----------------------------------------------------

COST_COLUMNS = (("wall_seconds", "wall [s]"), ("cpu_seconds", "CPU [s]"),
                ("peak_rss_mb", "peak RSS [MB]"))


def fmt_count(v: int | None) -> str:
    """A whole number with thousands separators (DASH when unknown)."""
    return DASH if v is None else f"{v:,}"


def binarization_text(binarization: str, info: dict | None) -> str:
    """How a prepared dataset's binary view was made, from its recorded metadata
    (:class:`gm.data.Splits` ``binarization`` and ``info``)."""
    b = (info or {}).get("binarization") or {}
    if b.get("method") == "stochastic":
        return f"fixed, stochastic: {b.get('rule', 'Bernoulli(grey / 255)')}, seed {b.get('seed')}"
    if binarization == "dynamic":
        return ("dynamic: training images drawn afresh from grey / 255 every epoch; validation "
                "and test drawn once")
    return "fixed (the same binary images every epoch)"


def data_table(facts: list[dict]) -> pd.DataFrame:
    """One row per dataset: split sizes, pixels, binarization, options and checksum.
    ``facts``: {"dataset", "sizes": {split: n}, "data_dim", "image_shape", "levels",
    "binarization", "info", "options", "checksum"}."""
    rows = []
    for f in facts:
        sizes = f["sizes"]
        shape = f.get("image_shape") or ()
        rows.append({"dataset": f["dataset"], "train": fmt_count(sizes.get("train")),
                     "validation": fmt_count(sizes.get("val")),
                     "test": fmt_count(sizes.get("test")),
                     "pixels": (f"{f['data_dim']} ({shape[0]}x{shape[1]})"
                                if len(shape) == 2 and all(shape) else str(f["data_dim"])),
                     "real view": f"{f['levels']} grey levels" if f.get("levels") else DASH,
                     "binary view": binarization_text(f["binarization"], f.get("info")),
                     "options (params datasets:)": ", ".join(
                         f"{k}: {v}" for k, v in sorted((f.get("options") or {}).items()))
                     or "defaults",
                     "data sha256": f["checksum"][:16]})
    return pd.DataFrame(rows)


def _canonical(v) -> str:
    return json.dumps(v, sort_keys=True)


def budget_table(budgets: dict[str, dict], order: list[str] | None = None) -> pd.DataFrame:
    """The evaluation settings the runs recorded (eval.json ``budget``), one row per setting:
    the value most runs used, and the runs that used another.  ``budgets``: run label
    (e.g. "fashion_mnist/rbm") -> its settings; ``order``: the settings in display order."""
    names = list(order or [])
    names += sorted({k for b in budgets.values() for k in b} - set(names))
    rows = []
    for name in names:
        values = {label: b[name] for label, b in budgets.items() if name in b}
        if not values:
            continue
        counts: dict[str, int] = {}
        for v in values.values():
            counts[_canonical(v)] = counts.get(_canonical(v), 0) + 1
        common = max(counts, key=lambda c: (counts[c], c))
        others = [f"{label}: {_display(v)}" for label, v in sorted(values.items())
                  if _canonical(v) != common]
        rows.append({"setting": name, "value": _display(json.loads(common)),
                     "runs with another value": "; ".join(others) or DASH})
    return pd.DataFrame(rows)


def _display(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_display(x) for x in v) + "]" if v else "[] (off)"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def epochs_table(trains: list[dict], evals: list[EvalRecord],
                 n_train: dict[str, int]) -> pd.DataFrame:
    """One row per (dataset, model) from its train.json files: epochs, minibatch size,
    updates, mean seconds per epoch and per training, and the number of test examples its
    headline value averages.  ``n_train``: dataset -> training examples."""
    by: dict[tuple[str, str], list[dict]] = {}
    for t in trains:
        by.setdefault((t["dataset"], t["model"]), []).append(t)
    scored: dict[tuple[str, str], set[int]] = {}
    for e in evals:
        scored.setdefault((e.dataset, e.model), set()).add(e.test_log_likelihood.n)
    rows = []
    for (ds, model), ts in sorted(by.items()):
        epochs = sorted({t.get("epochs") for t in ts if t.get("epochs") is not None})
        batch = sorted({t.get("batch_size") for t in ts if t.get("batch_size") is not None})
        per_epoch = [h["epoch_seconds"] for t in ts for h in t["history"]
                     if isinstance(h.get("epoch_seconds"), (int, float))]
        n = n_train.get(ds)
        updates = (sorted({e * math.ceil(n / b) for e in epochs for b in batch})
                   if n and epochs and batch else [])
        rows.append({"dataset": ds, "model": model,
                     "epochs": ", ".join(map(str, epochs)) or DASH,
                     "batch size": ", ".join(map(str, batch)) or DASH,
                     "updates": ", ".join(f"{u:,}" for u in updates) or DASH,
                     "s/epoch": fmt(float(np.mean(per_epoch)), 2) if per_epoch else DASH,
                     "train [s]": fmt(float(np.mean([t["train_seconds"] for t in ts])), 1),
                     "seeds": str(len(ts)),
                     "test examples scored": ", ".join(
                         f"{v:,}" for v in sorted(scored.get((ds, model), ()))) or DASH})
    return pd.DataFrame(rows)


def cost_table(rows: list[dict]) -> pd.DataFrame:
    """Cost of each train and evaluate stage, with a totals row (sums of wall and CPU
    seconds, the largest peak RSS).  ``rows``: {"dataset", "model", "seed", "stage",
    "cost": {"wall_seconds", "cpu_seconds", "peak_rss_mb"} or None}; a stage whose record has
    no cost (made before costs were recorded) shows DASH and is left out of the totals."""
    out, totals, missing = [], {k: [] for k, _ in COST_COLUMNS}, 0
    for r in rows:
        cost = r.get("cost") or {}
        missing += not cost
        row = {"dataset": r["dataset"], "model": r["model"], "seed": str(r["seed"]),
               "stage": r["stage"]}
        for key, label in COST_COLUMNS:
            v = cost.get(key)
            ok = isinstance(v, (int, float)) and math.isfinite(v)
            row[label] = fmt(float(v), 1) if ok else DASH
            if ok:
                totals[key].append(float(v))
        out.append(row)
    if out:
        total = {"dataset": "total", "model": f"{len(out) - missing} of {len(out)} stages "
                 "with a recorded cost" if missing else f"{len(out)} stages",
                 "seed": "", "stage": "train + evaluate"}
        for key, label in COST_COLUMNS:
            vals = totals[key]
            agg = max if key == "peak_rss_mb" else sum
            total[label] = fmt(agg(vals), 1) if vals else DASH
        out.append(total)
    return pd.DataFrame(out)
