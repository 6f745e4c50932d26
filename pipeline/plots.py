"""Report figures: each drawn by one function from one tidy frame (matplotlib, Agg backend).

:func:`dataset_figures` is the report's entry point: caption -> PNG for one dataset.

- training curves: each model's declared progress curve (``GenerativeModel.progress``, a
  :class:`gm.base.Curve`), one thin line per seed, one figure per model family when one grid
  would be too large;
- test log-likelihoods: one panel per (data view, comparability group), so proxies, bounds and
  likelihoods never share an axis, nor binary probabilities and real-valued densities;
- AIS convergence: log Z against the number of intermediate distributions (Salakhutdinov &
  Murray 2008, sec. 4), relative to the exact log Z where it is enumerable;
- Pareto plots: likelihood against a sample-quality metric and against training cost, per
  group, with the frontier drawn (Theis et al. 2016: the two measures can disagree);
- a "better than" matrix per dataset from the paired comparisons (pipeline/compare.py);
- the hyperparameter search's best validation value after each trial, one panel per study
  (:func:`best_so_far_figure`, drawn for :mod:`pipeline.tuning_report`).

Every figure is deterministic (no random jitter; labels placed by a fixed search order) and
sized for the report's 1,200 px column at 100 dpi.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gm.base import KINDS
from gm.io import atomic_path
from pipeline.compare import GROUPS as GROUP_OF_KIND
from pipeline.record import EvalRecord

WIDTH = 11.5          # inches at 100 dpi: fits the report's 1,200 px column unscaled
DPI = 100
RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI}

# one colour per likelihood kind, in the order of gm.base.KINDS
KIND_COLORS = dict(zip(KINDS, ("#1b9e77", "#7570b3", "#d95f02", "#e7298a", "#999999"),
                       strict=True))
SEED_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf")
# which kinds are compared with each other (the report's comparability groups)
GROUPS = tuple(dict.fromkeys(GROUP_OF_KIND.values()))
GROUP_TITLE = {"likelihood": "likelihoods (exact values and estimates)",
               "lower bound": "lower bounds of log p(x)",
               "upper bound": "upper bounds of log p(x)",
               "proxy": "proxies (Parzen windows: not likelihoods, not ranked against them)"}
GROUP_SHORT = {"likelihood": "likelihoods", "lower bound": "lower bounds",
               "upper bound": "upper bounds", "proxy": "proxies"}
VIEW_TITLE = {"binary": "binary view (probabilities of binary images)",
              "real": "real view (densities of dequantised grey levels)",
              "sequence": "sequences (conditional likelihood of each frame given its history)"}
VIEW_AXIS = {"binary": ("log p(x)", "nats per image"),
             "real": ("log density p(x)", "nats per image"),
             "sequence": ("log p(frame | previous frames)", "nats per frame")}
FAMILIES = ("energy", "directed", "autoregressive", "chains", "baselines")
MAX_CURVE_PANELS = 12  # more models than this: one training-curves figure per family


# ---------------------------------------------------------------------------------- helpers

def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def model_class(run: str, registered: Mapping[str, str] | None = None,
                train: Mapping | None = None) -> type | None:
    """The registered class behind run name ``run``: ``registered[run]`` (the report's
    ``pipeline.params.registered_model`` map), else the train record's ``registered_model``,
    else ``run`` itself; None when none of them is registered."""
    import gm
    for name in ((registered or {}).get(run), (train or {}).get("registered_model"), run):
        if name and name in gm.model_names():
            return gm.model_class(name)
    return None


def family_of(cls: type | None) -> str:
    """The model family (gm/models/<family>/), "baselines" for reference models."""
    if cls is None:
        return "other"
    if getattr(cls, "is_baseline", False):
        return "baselines"
    parts = cls.__module__.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["gm", "models"] else "other"


def value_label(view: str, group: str) -> str:
    """Axis label of a test value: what it is, in which unit."""
    what, unit = VIEW_AXIS.get(view, ("log p(x)", "nats per example"))
    prefix = {"lower bound": "lower bound of ", "upper bound": "upper bound of ",
              "proxy": "Parzen proxy of "}.get(group, "")
    return f"test {prefix}{what} [{unit}]  (higher is better)"


def _group_order(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(view, group) pairs present in ``frame``, binary view first, groups in GROUPS order."""
    views = sorted(frame["view"].unique(), key=lambda v: (v != "binary", v))
    return [(v, g) for v in views for g in GROUPS
            if ((frame["view"] == v) & (frame["group"] == g)).any()]


# ------------------------------------------------------------------------- training curves

def progress_frame(trains: list[dict], registered: Mapping[str, str] | None = None
                   ) -> pd.DataFrame:
    """Each run's declared progress curve, one row per (dataset, model, seed, epoch).

    Columns: dataset, model, family, seed, epoch, metric, value, label, unit, higher_is_better.
    The curve is ``model_class(...).progress``; a run whose class declares none, or whose
    history lacks the declared metric, contributes no rows.
    """
    rows = []
    for t in trains:
        cls = model_class(t["model"], registered, t)
        curve = getattr(cls, "progress", None)
        if curve is None:
            continue
        for h in t["history"]:
            v = h.get(curve.metric)
            if v is not None and math.isfinite(v):
                rows.append({"dataset": t["dataset"], "model": t["model"],
                             "family": family_of(cls), "seed": t["seed"], "epoch": h["epoch"],
                             "metric": curve.metric, "value": float(v), "label": curve.label,
                             "unit": curve.unit, "higher_is_better": curve.higher_is_better})
    cols = ["dataset", "model", "family", "seed", "epoch", "metric", "value", "label", "unit",
            "higher_is_better"]
    return pd.DataFrame(rows, columns=cols).sort_values(
        ["dataset", "model", "seed", "epoch"], kind="stable").reset_index(drop=True)


def progress_table(trains: list[dict], registered: Mapping[str, str] | None = None
                   ) -> pd.DataFrame:
    """The declared progress curves for ``dvc plots show`` (reports/progress.csv): one row per
    (dataset, model, seed, epoch) with columns panel ("<dataset> / <model>", then "<label>
    [<unit>] (<direction>)" wrapped to lines of 50 characters: the facet header of the dvc
    template .dvc/plots/progress.json), dataset, model, seed, epoch, metric, value."""
    f = progress_frame(trains, registered)
    unit = f["unit"].map(lambda u: f" [{u}]" if u else "")
    better = f["higher_is_better"].map(lambda h: " (higher is better)" if h
                                       else " (lower is better)")
    text = (f["label"] + unit + better).map(lambda t: "\n".join(textwrap.wrap(t, 50)))
    f.insert(0, "panel", f["dataset"] + " / " + f["model"] + "\n" + text)
    return f[["panel", "dataset", "model", "seed", "epoch", "metric", "value"]]


def curves_figure(frame: pd.DataFrame, title: str, ncols: int = 4):
    """One panel per model of a :func:`progress_frame` (one dataset), one thin line per seed.

    Each panel's title and y label come from the same rows as the lines it draws (grouped by
    model once), so a title can never name another model's curve.
    """
    panels = list(frame.groupby("model", sort=True))
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                                 figsize=(WIDTH, 2.5 * nrows + 0.6), layout="constrained")
        seeds = sorted(frame["seed"].unique())
        for ax, (model, rows) in zip(axes.flat, panels):
            first = rows.iloc[0]
            for s, run in rows.groupby("seed", sort=True):
                run = run.sort_values("epoch")
                ax.plot(run["epoch"].to_numpy(), run["value"].to_numpy(), lw=1.0,
                        color=SEED_COLORS[seeds.index(s) % len(SEED_COLORS)],
                        label=f"seed {s}")
            ax.set_title(_wrap(f"{model}: {first['label']}", 34))
            direction = "higher is better" if first["higher_is_better"] else "lower is better"
            unit = f" [{first['unit']}]" if first["unit"] else ""
            ax.set_ylabel(_wrap(f"{first['metric']}{unit} ({direction})", 32))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=SEED_COLORS[i % len(SEED_COLORS)], lw=1.0,
                          label=f"seed {s}") for i, s in enumerate(seeds)]
        fig.legend(handles=handles, loc="outside upper right", ncols=len(seeds), frameon=False)
        fig.suptitle(title, x=0.01, ha="left")
    return fig


def curve_figures(trains: list[dict], ds: str, registered: Mapping[str, str] | None = None
                  ) -> list[tuple[str, str, object]]:
    """(caption, file stem, figure): one figure for a dataset's curves, or one per family."""
    frame = progress_frame([t for t in trains if t["dataset"] == ds], registered)
    missing = sorted({t["model"] for t in trains if t["dataset"] == ds}
                     - set(frame["model"]))
    note = f"; no declared progress curve: {', '.join(missing)}" if missing else ""
    if frame.empty:
        return []
    if frame["model"].nunique() <= MAX_CURVE_PANELS:
        return [("training curves", f"{ds}-curves",
                 curves_figure(frame, f"{ds}: training curves (each model's declared progress "
                                      f"curve, per-epoch means){note}"))]
    out = []
    order = {f: i for i, f in enumerate(FAMILIES)}
    for fam, rows in sorted(frame.groupby("family"), key=lambda kv: (order.get(kv[0], 99),
                                                                        kv[0])):
        out.append((f"training curves: {fam}", f"{ds}-curves-{fam}",
                    curves_figure(rows, f"{ds}: training curves, {fam} models"
                                        + (note if not out else ""))))
    return out


# ----------------------------------------------------------------------- test likelihoods

def likelihood_frame(evals: list[EvalRecord], ds: str,
                     registered: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per run of dataset ``ds``: model, seed, view, kind, group, method, value
    (mean test log p(x) in nats), baseline (a reference model), train_seconds and every sample
    metric's value."""
    rows = []
    for e in evals:
        if e.dataset != ds:
            continue
        ll = e.test_log_likelihood
        cls = model_class(e.model, registered)
        rows.append({"model": e.model, "seed": e.seed, "view": e.data_view, "kind": ll.kind,
                     "group": GROUP_OF_KIND[ll.kind], "method": ll.method, "value": ll.mean,
                     "baseline": bool(getattr(cls, "is_baseline", False)),
                     "train_seconds": e.timing.train_seconds,
                     **{f"metric:{k}": m.value for k, m in e.sample_metrics.items()}})
    return pd.DataFrame(rows)


def _per_model(sub: pd.DataFrame, col: str) -> pd.DataFrame:
    """Mean, min and max over seeds of ``col`` per model, with the model's kind and method."""
    g = sub.groupby("model", sort=True)
    out = g[col].agg(["mean", "min", "max", "count"])
    out["kind"] = g["kind"].first()
    out["method"] = g["method"].first()
    out["baseline"] = g["baseline"].first()
    return out


def likelihood_figure(frame: pd.DataFrame, ds: str, optimum: float | None = None,
                      pixels: int | None = None):
    """One horizontal dot plot per (view, group): mean over seeds, bars the range over seeds,
    best model on top; baselines hollow, the best baseline as a dashed line; ``optimum`` (the
    best achievable binary log p(x), when known) as a dotted line.  With ``pixels`` (binary
    values per image or frame), binary and sequence panels other than proxies get a top axis
    in bits per dimension, -log p / (pixels ln 2)."""
    keys = _group_order(frame)
    sizes = [frame[(frame["view"] == v) & (frame["group"] == g)]["model"].nunique()
             for v, g in keys]
    with plt.rc_context(RC):
        # inches: rows, x axis and panel title (and the bits-per-dimension axis on top)
        heights = [0.28 * n + (1.6 if pixels and v != "real" and g != "proxy" else 1.2)
                   for n, (v, g) in zip(sizes, keys)]
        fig, axes = plt.subplots(len(keys), 1, squeeze=False, layout="constrained",
                                 figsize=(WIDTH * 0.75, sum(heights) + 0.8),
                                 gridspec_kw={"height_ratios": heights})
        for ax, (view, group) in zip(axes[:, 0], keys):
            stats = _per_model(frame[(frame["view"] == view) & (frame["group"] == group)],
                               "value").sort_values("mean", ascending=True)
            y = np.arange(len(stats))
            for yi, (model, r) in zip(y, stats.iterrows()):
                color = KIND_COLORS[r["kind"]]
                ax.plot([r["min"], r["max"]], [yi, yi], color=color, lw=2, alpha=0.6)
                ax.plot([r["mean"]], [yi], "o", ms=6, color=color,
                        mfc="white" if r["baseline"] else color)
            ax.set_yticks(y, [f"{m} ({r['method']}{', baseline' if r['baseline'] else ''})"
                              for m, r in stats.iterrows()])
            ax.set_ylim(-0.6, len(stats) - 0.4)
            base = stats[stats["baseline"]]
            if not base.empty:
                ax.axvline(base["mean"].max(), color="#444444", ls="--", lw=0.9)
            if optimum is not None and view == "binary" and group == "likelihood":
                ax.axvline(optimum, color="black", ls=":", lw=1.0)
            ax.set_xlabel(value_label(view, group))
            if pixels and view in ("binary", "sequence") and group != "proxy":
                scale = pixels * math.log(2)
                top = ax.secondary_xaxis("top", functions=(lambda v, s=scale: -v / s,
                                                           lambda b, s=scale: -b * s))
                top.set_xlabel("bits per dimension (lower is better)", fontsize=8)
            ax.set_title(f"{VIEW_TITLE.get(view, view)}: {GROUP_TITLE[group]}", loc="left")
            ax.grid(axis="x", alpha=0.3)
        kinds = [k for k in KINDS if k in set(frame["kind"])]
        handles = [Line2D([], [], marker="o", ls="-", color=KIND_COLORS[k], label=k)
                   for k in kinds]
        if frame["baseline"].any():
            handles += [Line2D([], [], marker="o", ls="none", color="#444444", mfc="white",
                               label="baseline model"),
                        Line2D([], [], color="#444444", ls="--", label="best baseline")]
        if optimum is not None:
            handles.append(Line2D([], [], color="black", ls=":",
                                  label=f"optimum ({optimum:.3f})"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)),
                   frameon=False)
        n_seeds = frame.groupby("model")["seed"].nunique()
        fig.suptitle(f"{ds}: test log-likelihoods by kind, in nats (dot: mean over seeds; bar: "
                     f"range over {n_seeds.min()}-{n_seeds.max()} seeds)"
                     if n_seeds.min() != n_seeds.max() else
                     f"{ds}: test log-likelihoods by kind, in nats (dot: mean over seeds; bar: "
                     f"range over {n_seeds.min()} seeds)", x=0.01, ha="left")
    return fig


# ------------------------------------------------------------------------- AIS convergence

def reported_ais_point(e: EvalRecord) -> tuple[int, float, float] | None:
    """(distributions, log Z, stderr) of the reported number's own AIS run, where the headline
    rests on AIS (method "ais", or "...+ais") and recorded its log Z; else None."""
    ll = e.test_log_likelihood
    if "ais" not in ll.method.split("+") or not {"log_z", "ais_betas"} <= ll.info.keys():
        return None
    return (int(ll.info["ais_betas"]), float(ll.info["log_z"]),
            float(ll.info.get("log_z_stderr", math.nan)))


def ais_frame(evals: list[EvalRecord], ds: str) -> pd.DataFrame:
    """One row per AIS run of a model with a convergence record: its convergence points and the
    reported number's own run (:func:`reported_ais_point`, ``reported`` True; each point is an
    independent AIS run).  Columns: model, seed, betas, log_z, stderr, delta (log Z minus the
    reference: the exact log Z, else the estimate with the most distributions, the reported
    run included), exact (whether the reference is exact), reported, and headline (the
    distributions of the reported number)."""
    rows = []
    for e in evals:
        c = e.ais_convergence
        if e.dataset != ds or c is None or not c.points:
            continue
        head = (e.budget or {}).get("ais_betas", e.test_log_likelihood.info.get("ais_betas"))
        points = [(p.betas, p.log_z, p.stderr, False) for p in c.points]
        reported = reported_ais_point(e)
        if reported is not None and reported[0] not in {p.betas for p in c.points}:
            points.append((*reported, True))
        points.sort()
        reference = c.exact_log_z if c.exact_log_z is not None else points[-1][1]
        for betas, log_z, stderr, is_reported in points:
            rows.append({"model": e.model, "seed": e.seed, "betas": betas, "log_z": log_z,
                         "stderr": stderr, "delta": log_z - reference,
                         "exact": c.exact_log_z is not None, "reported": is_reported,
                         "headline": math.nan if head is None else float(head)})
    return pd.DataFrame(rows)


def ais_figure(frame: pd.DataFrame, ds: str, ncols: int = 3):
    """One panel per model: AIS log Z minus the reference against the number of intermediate
    distributions (log x), one line per seed with +-1 stderr bars over chains, the reported
    number's own run as a star; the reference at 0 (solid: the exact log Z; dotted: the run
    with the most distributions); the headline number of distributions as a dashed vertical
    line."""
    panels = list(frame.groupby("model", sort=True))
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    seeds = sorted(frame["seed"].unique())
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=(WIDTH * min(1.0, 0.34 * ncols + 0.05),
                                          2.7 * nrows + 0.8))
        for ax, (model, rows) in zip(axes.flat, panels):
            exact = bool(rows["exact"].all())
            for s, run in rows.groupby("seed", sort=True):
                run = run.sort_values("betas")
                ax.errorbar(run["betas"].to_numpy(float), run["delta"].to_numpy(float),
                            yerr=run["stderr"].to_numpy(float), marker="o", ms=3,
                            lw=1, capsize=2,
                            color=SEED_COLORS[seeds.index(s) % len(SEED_COLORS)])
                mine = run[run["reported"]]
                ax.plot(mine["betas"].to_numpy(float), mine["delta"].to_numpy(float), ls="",
                        marker="*", ms=9, color=SEED_COLORS[seeds.index(s) % len(SEED_COLORS)])
            ax.axhline(0.0, color="black", lw=1.0, ls="-" if exact else ":")
            for h in sorted(rows["headline"].dropna().unique()):
                ax.axvline(h, color="#444444", ls="--", lw=0.9)
            ax.set_xscale("log")
            ax.set_xlabel("intermediate distributions")
            ax.set_ylabel("log Z - exact log Z [nats]" if exact
                          else "log Z - log Z at most distributions [nats]", fontsize=8)
            ax.set_title(f"{model} ({'exact log Z known' if exact else 'no exact log Z'})")
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=SEED_COLORS[i % len(SEED_COLORS)], marker="o", ms=3,
                          label=f"seed {s}") for i, s in enumerate(seeds)]
        handles += [Line2D([], [], color="black", label="exact log Z"),
                    Line2D([], [], color="black", ls=":", label="estimate at most distributions"),
                    Line2D([], [], color="#444444", ls="--",
                           label="distributions of the reported number"),
                    Line2D([], [], color="#444444", ls="", marker="*", ms=9,
                           label="the reported number's own run")]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        fig.suptitle(f"{ds}: AIS log Z against the number of intermediate distributions "
                     "(bars: +-1 stderr over chains)", x=0.01, ha="left")
    return fig


# ---------------------------------------------------------------------------- Pareto plots

def pareto_front(x: np.ndarray, y: np.ndarray, x_lower_better: bool = True) -> np.ndarray:
    """Boolean mask of the points no other point dominates, for y higher-is-better and x
    lower- (or higher-) is better: j dominates i when it is at least as good on both and
    strictly better on one."""
    x = np.asarray(x, float) * (1 if x_lower_better else -1)   # now lower x is better
    y = np.asarray(y, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        better = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not better.any()
    return keep


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


# offsets (points) tried in this order, nearest first; ha/va keep the text off its point
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.5, 5.5)
            for dx, dy in ((6, 4), (6, -4), (-6, 4), (-6, -4), (0, 8), (0, -8), (9, 0), (-9, 0))]


def place_labels(ax, xs, ys, texts, fontsize: float = 8) -> list:
    """Annotate each point (data coords) with its text, joined by a thin leader line, at the
    first offset (in the fixed order of ``_OFFSETS``) whose box overlaps no label placed before
    and no marker and stays inside the axes; when none fits, the offset of least overlap.
    Points are labelled top to bottom; the result is deterministic."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pix = ax.transData.transform(np.column_stack([xs, ys]))
    marks = [matplotlib.transforms.Bbox([[px - 5, py - 5], [px + 5, py + 5]]) for px, py in pix]
    inside = ax.get_window_extent(renderer)
    placed, out = [], []
    for i in np.lexsort((pix[:, 0], -pix[:, 1])):   # top to bottom, then left to right
        best = None
        for dx, dy in _OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            t = ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx, dy),
                            textcoords="offset points", ha=ha, va=va, fontsize=fontsize)
            box = t.get_window_extent(renderer)
            t.remove()
            cost = sum(_overlap(box, b) for b in placed) \
                + sum(_overlap(box, m) for j, m in enumerate(marks) if j != i) \
                + 10 * (box.width * box.height - _overlap(box, inside))
            if best is None or cost < best[0]:
                best = (cost, box, dx, dy, ha, va)
            if cost == 0:
                break
        _, box, dx, dy, ha, va = best
        placed.append(box)
        out.append(ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx, dy),
                               textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                               arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#777777",
                                           "shrinkA": 0, "shrinkB": 3}))
    return out


def _spread(row) -> list[list[float]]:
    """Error-bar lengths [[below], [above]] of a mean within [min, max] (never negative: the
    mean of equal values can differ from them in the last bit)."""
    return [[max(0.0, row["mean"] - row["min"])], [max(0.0, row["max"] - row["mean"])]]


def pareto_figure(frame: pd.DataFrame, ds: str, x_col: str, x_label: str,
                  x_lower_better: bool = True, what: str = ""):
    """One panel per (view, group): mean over seeds of the likelihood (y) against ``x_col``
    (x), with range-over-seeds bars in both directions, the Pareto frontier as a step line
    and every model labelled (see :func:`place_labels`); x on a log scale when it spans more
    than a factor 20.  Groups with fewer than two models are left out."""
    keys = [k for k in _group_order(frame)   # a frontier needs two models at least
            if frame[(frame["view"] == k[0]) & (frame["group"] == k[1])
                     & frame[x_col].notna()]["model"].nunique() >= 2]
    if not keys:
        return None
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=(WIDTH if ncols == 2 else WIDTH * 0.6, 4.2 * nrows + 0.6))
        for ax, (view, group) in zip(axes.flat, keys):
            sub = frame[(frame["view"] == view) & (frame["group"] == group)
                        & frame[x_col].notna()]
            ys = _per_model(sub, "value")
            xs = sub.groupby("model", sort=True)[x_col].agg(["mean", "min", "max"])
            front = pareto_front(xs["mean"].to_numpy(), ys["mean"].to_numpy(), x_lower_better)
            for model in ys.index:
                r, q = ys.loc[model], xs.loc[model]
                color = KIND_COLORS[r["kind"]]
                ax.errorbar(q["mean"], r["mean"], color=color, ms=6,
                            xerr=_spread(q), yerr=_spread(r),
                            marker="o", mfc="white" if r["baseline"] else color,
                            elinewidth=0.8, alpha=0.9)
            fx, fy = xs["mean"][front].to_numpy(), ys["mean"][front].to_numpy()
            order = np.argsort(fx if x_lower_better else -fx, kind="stable")
            ax.step(fx[order], fy[order], where="post", color="black", lw=1.0, ls="--",
                    zorder=0)
            lo, hi = np.nanmin(xs["min"]), np.nanmax(xs["max"])
            if lo > 0 and hi / lo > 20:   # spread over decades: log scale, plain numbers
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                    lambda v, _: f"{v:g}"))
            ax.set_xlabel(x_label)
            ax.set_ylabel(value_label(view, group), fontsize=8)
            ax.set_title(_wrap(f"{VIEW_TITLE.get(view, view)}: {GROUP_TITLE[group]}", 70),
                         loc="left")
            ax.grid(alpha=0.3)
            ax.margins(0.12)
            place_labels(ax, xs["mean"].to_numpy(), ys["mean"].to_numpy(),
                         [f"{m}*" if f else m for m, f in zip(ys.index, front)])
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        kinds = [k for k in KINDS if k in set(frame["kind"])]
        handles = [Line2D([], [], marker="o", ls="none", color=KIND_COLORS[k], label=k)
                   for k in kinds]
        handles.append(Line2D([], [], color="black", ls="--", label="Pareto frontier (* on it)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   frameon=False)
        better = "lower" if x_lower_better else "higher"
        fig.suptitle(f"{ds}: test log-likelihood against {what or x_col} ({better} is better), "
                     "mean over seeds, bars: range over seeds", x=0.01, ha="left")
    return fig


SAMPLE_AXIS = ("fid", "kid", "mmd_pixel")   # the sample-quality metric on the Pareto x axis


def _sample_metric(evals: list[EvalRecord], ds: str) -> tuple[str, str, bool, str] | None:
    """(metric, axis label, lower is better, short name) of the first of SAMPLE_AXIS this
    dataset has; label and space from the report's metric legend (pipeline/legend.py)."""
    from pipeline import legend
    for name in SAMPLE_AXIS:
        ms = [e.sample_metrics[name] for e in evals if e.dataset == ds and name in
              e.sample_metrics]
        if ms:
            label, space, better, _ = legend.info(name)
            lower = (ms[0].details.get("better") or better or "lower") != "higher"
            where = {"features": "features of the pipeline's own classifier, not Inception",
                     "pixels": "pixel space"}.get(space, space)
            return (name, f"{label} ({where}; {'lower' if lower else 'higher'} is better)",
                    lower, label)
    return None


# ------------------------------------------------------------------ "better than" matrices

def _matrix_order(p: pd.DataFrame) -> tuple[list[str], dict, dict]:
    """Models of one group's pairs, most significant wins first (then fewest losses, largest
    summed difference, name), with sign[(a, b)] in {1, -1, 0} (significantly better, worse,
    not significant) and diff[(a, b)] = mean of log p_a - log p_b."""
    models = sorted(set(p["a"]) | set(p["b"]))
    sign = {(a, b): (int(np.sign(d)) if s else 0)
            for a, b, d, s in zip(p["a"], p["b"], p["mean_diff"], p["significant"])}
    diff = {(a, b): float(d) for a, b, d in zip(p["a"], p["b"], p["mean_diff"])}
    wins = {m: sum(v == 1 for (a, _), v in sign.items() if a == m) for m in models}
    losses = {m: sum(v == -1 for (a, _), v in sign.items() if a == m) for m in models}
    total = {m: sum(d for (a, _), d in diff.items() if a == m) for m in models}
    models.sort(key=lambda m: (-wins[m], losses[m], -total[m], m))
    return models, sign, diff


BETTER_COLORS = {1: "#1b9e77", -1: "#d95f02", 0: "#e0e0e0"}


def better_figure(pairs: pd.DataFrame, ds: str, annotate_max: int = 14, cell: float = 0.38):
    """One matrix per (view, group) of the paired comparisons ``pairs`` (columns dataset,
    view, group, a, b, mean_diff, low, high, significant; mean_diff = a - b in nats): cell
    (a, b) green when a is significantly better than b, orange when significantly worse, grey
    when not significant; the mean difference written in the cell (up to ``annotate_max``
    models).  Rows and columns in the same order, most wins first.  Cells are ``cell`` inches
    square in every panel; panels are packed left to right in rows of the report's width."""
    pairs = pairs[pairs["dataset"] == ds]
    if pairs.empty:
        return None
    groups = sorted(pairs.groupby(["view", "group"]), key=lambda kv: (
        kv[0][0] != "binary", kv[0][0], GROUPS.index(kv[0][1]) if kv[0][1] in GROUPS else 9))
    panels = [(key, *_matrix_order(p)) for key, p in groups]
    # margins in inches: y tick labels left, rotated x tick labels below, title above
    left = [0.25 + 0.065 * max(len(m) for m in models) for _, models, _, _ in panels]
    below = [0.3 + 0.05 * max(len(m) for m in models) for _, models, _, _ in panels]
    top, gap = 0.45, 0.35
    rows, row, used = [], [], 0.0
    for k, (_, models, _, _) in enumerate(panels):
        w = left[k] + len(models) * cell + gap
        if row and used + w > WIDTH:
            rows.append(row)
            row, used = [], 0.0
        row.append(k)
        used += w
    rows.append(row)
    heights = [max(len(panels[k][1]) * cell + below[k] for k in r) + top for r in rows]
    legend_h, title_h = 0.45, 0.35
    fig_h = sum(heights) + legend_h + title_h
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(WIDTH, fig_h))
        y_top = fig_h - title_h
        for r, h in zip(rows, heights):
            x = 0.0
            for k in r:
                (view, group), models, sign, diff = panels[k]
                n = len(models)
                x += left[k]
                ax = fig.add_axes([x / WIDTH, (y_top - top - n * cell) / fig_h,
                                   n * cell / WIDTH, n * cell / fig_h])
                x += n * cell + gap
                rgb = np.ones((n, n, 3))
                for i, a in enumerate(models):
                    for j, b in enumerate(models):
                        if i != j and (a, b) in sign:
                            rgb[i, j] = matplotlib.colors.to_rgb(BETTER_COLORS[sign[a, b]])
                        if i != j and (a, b) in diff and n <= annotate_max:
                            d = diff[a, b]
                            ax.text(j, i, "0.0" if abs(d) < 0.05 else f"{d:+.1f}",
                                    ha="center", va="center", fontsize=6.5,
                                    color="white" if sign.get((a, b)) else "#333333")
                ax.imshow(rgb, aspect="auto", interpolation="nearest")
                ax.set_xticks(range(n), models, rotation=60, ha="right",
                              rotation_mode="anchor")
                ax.set_yticks(range(n), models)
                ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
                ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
                ax.grid(which="minor", color="white", lw=1)
                ax.tick_params(which="both", length=0)
                ax.set_title(_wrap(f"{view} view: {GROUP_SHORT.get(group, group)}",
                                   max(14, int((n * cell + left[k]) * 12))), loc="right")
            y_top -= h
        handles = [Patch(color=BETTER_COLORS[1], label="row a significantly better than "
                                                       "column b"),
                   Patch(color=BETTER_COLORS[-1], label="row a significantly worse"),
                   Patch(color=BETTER_COLORS[0], label="difference not significant")]
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 0.0), ncols=3,
                   frameon=False)
        fig.suptitle(f"{ds}: paired comparisons on the same test examples (cell: mean over "
                     "examples of log p_a(x) - log p_b(x), nats)", x=0.0, ha="left",
                     y=1 - 0.1 / fig_h, va="top")
    return fig


# -------------------------------------------------------------------- hyperparameter search

TUNING_AXIS = {"likelihood": "best validation log p(x) [nats/image]",
               "samples": "best validation F(P, R) - duplicates [-1, 1]"}


def best_so_far_figure(frame: pd.DataFrame, ncols: int = 4):
    """One panel per study of the hyperparameter search (columns panel, objective, trial,
    best: the best validation value after each trial, NaN before the first finished one),
    in the frame's order; the y label names the panel's objective and its unit."""
    panels = list(frame.groupby("panel", sort=False))
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=(WIDTH * min(1.0, 0.25 * ncols + 0.05),
                                          2.4 * nrows + 0.6))
        for ax, (panel, rows) in zip(axes.flat, panels):
            objective = rows["objective"].iloc[0]
            ax.step(rows["trial"].to_numpy(), rows["best"].to_numpy(float), where="post",
                    marker="o", ms=3, lw=1.2, color=SEED_COLORS[0])
            ax.set_title(f"{panel} ({objective})")
            ax.set_xlabel("trial")
            ax.set_ylabel(_wrap(TUNING_AXIS.get(objective, f"best validation {objective}"), 30))
            ax.set_xlim(0.5, rows["trial"].max() + 0.5)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        fig.suptitle("Hyperparameter search: best validation value after each trial (higher "
                     "is better)", x=0.01, ha="left")
    return fig


def save_best_so_far(frame: pd.DataFrame, path: Path) -> Path:
    """:func:`best_so_far_figure` of ``frame`` written to ``path`` (the report's figure)."""
    return _save(best_so_far_figure(frame), Path(path))


# -------------------------------------------------------------------------- entry point

def dataset_figures(evals: list[EvalRecord], trains: list[dict], ds: str, outdir: Path,
                    pairs: pd.DataFrame | None = None, *,
                    registered: Mapping[str, str] | None = None,
                    optimum: float | None = None,
                    pixels: int | None = None) -> dict[str, Path]:
    """Every per-dataset figure of the report, caption -> PNG path under ``outdir``.

    pairs: the dataset's paired comparisons (pipeline/compare.py) or None; registered: run
    name -> registry name (``pipeline.params.registered_model``) for variants; optimum: the
    best achievable binary test log p(x) of this data, when known (e.g. -log 30 on
    bars_stripes), drawn on the likelihood panel; pixels: binary values per image (frame), for
    a bits-per-dimension axis beside nats.
    """
    outdir = Path(outdir)
    figs: dict[str, Path] = {}
    frame = likelihood_frame(evals, ds, registered)
    if frame.empty:
        return figs
    figs["test log-likelihoods by kind"] = _save(likelihood_figure(frame, ds, optimum, pixels),
                                                 outdir / f"{ds}-loglik.png")
    if pairs is not None and not pairs.empty and (fig := better_figure(pairs, ds)) is not None:
        figs["paired comparisons (better than)"] = _save(fig, outdir / f"{ds}-better.png")
    for caption, stem, fig in curve_figures(trains, ds, registered):
        figs[caption] = _save(fig, outdir / f"{stem}.png")
    ais = ais_frame(evals, ds)
    if not ais.empty:
        figs["AIS convergence"] = _save(ais_figure(ais, ds), outdir / f"{ds}-ais.png")
    if (m := _sample_metric(evals, ds)) is not None:
        name, label, lower, short = m
        fig = pareto_figure(frame, ds, f"metric:{name}", label, lower, what=short)
        if fig is not None:
            figs[f"likelihood against {short} (Pareto)"] = _save(fig,
                                                                  outdir / f"{ds}-pareto.png")
    fig = pareto_figure(frame, ds, "train_seconds", "training time [s] (lower is better)", True,
                        what="training time")
    if fig is not None:
        figs["likelihood against training cost (Pareto)"] = _save(
            fig, outdir / f"{ds}-pareto-cost.png")
    return figs
