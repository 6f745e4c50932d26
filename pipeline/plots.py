"""Report figures (seaborn): likelihoods with intervals, curves, cost Pareto, metric agreement."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from gm.base import KINDS  # noqa: E402
from gm.io import atomic_path  # noqa: E402
from pipeline.record import EvalRecord  # noqa: E402

# one colour per likelihood kind, in the order of gm.base.KINDS
KIND_COLORS = dict(zip(KINDS, ("#1b9e77", "#7570b3", "#d95f02", "#e7298a", "#999999"),
                       strict=True))


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _ll_frame(evals: list[EvalRecord], ds: str) -> pd.DataFrame:
    return pd.DataFrame([{"model": e.model, "seed": e.seed,
                          "log p(x)": e.test_log_likelihood.mean,
                          "kind": e.test_log_likelihood.kind,
                          "view": e.data_view,
                          "train_seconds": e.timing.train_seconds,
                          **{k: m.value for k, m in e.sample_metrics.items()}}
                         for e in evals if e.dataset == ds])


def dataset_figures(evals: list[EvalRecord], trains: list[dict], ds: str,
                    outdir: Path) -> dict[str, Path]:
    """Every per-dataset figure of the report, name -> PNG path."""
    df = _ll_frame(evals, ds)
    figs: dict[str, Path] = {}
    if df.empty:
        return figs
    views = sorted(df["view"].unique())
    fig, axes = plt.subplots(1, len(views), squeeze=False,
                             figsize=(6 * len(views), 0.35 * df["model"].nunique() + 1.5))
    for ax, view in zip(axes[0], views):  # a density of grey levels is not a probability
        sub = df[df["view"] == view]
        order = sub.groupby("model")["log p(x)"].mean().sort_values(ascending=False).index
        sns.pointplot(data=sub, y="model", x="log p(x)", hue="kind", order=order,
                      palette=KIND_COLORS, errorbar=("pi", 100), linestyle="none", ax=ax)
        ax.set_title(f"{ds}, {view} view: test log p(x)\n(mean over seeds; bars: range over seeds)",
                     fontsize=9)
    figs["log-likelihood by model"] = _save(fig, outdir / f"{ds}-loglik.png")

    rows = [{"model": t["model"], "seed": t["seed"], "epoch": h["epoch"],
             "metric": k, "value": v}
            for t in trains if t["dataset"] == ds for h in t["history"] for k, v in h.items()
            if k not in ("epoch", "epoch_seconds")]
    cur = pd.DataFrame(rows)
    if not cur.empty:
        first = cur.groupby("model")["metric"].first()
        cur = cur[cur["metric"] == cur["model"].map(first)]
        models = sorted(cur["model"].unique())
        ncol = min(4, len(models))
        grid = sns.relplot(data=cur, x="epoch", y="value", hue="seed", col="model",
                           col_wrap=ncol, kind="line", height=2.2, aspect=1.3,
                           facet_kws={"sharey": False, "sharex": False}, legend=False)
        for ax, model in zip(grid.axes.flat, models):
            ax.set_title(f"{model}: {first[model]}", fontsize=8)
        grid.figure.suptitle(f"{ds}: training curves (first logged metric)", y=1.02)
        figs["training curves"] = _save(grid.figure, outdir / f"{ds}-curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(data=df, x="train_seconds", y="log p(x)", hue="kind", style="view",
                    palette=KIND_COLORS, ax=ax)
    for (model, g) in df.groupby("model"):
        ax.annotate(model, (g["train_seconds"].mean(), g["log p(x)"].mean()), fontsize=7)
    ax.set_xscale("log")
    ax.set_title(f"{ds}: quality versus training cost")
    figs["quality versus training cost (Pareto)"] = _save(fig, outdir / f"{ds}-pareto.png")

    conv = []
    for e in evals:
        c = e.ais_convergence if e.dataset == ds else None
        if c is None or not c.points:
            continue
        label = " (vs exact)" if c.exact_log_z is not None else " (vs largest)"
        conv += [{"model": e.model + label, "seed": e.seed, "betas": pt.betas,
                  "log Z - reference": pt.log_z - c.reference} for pt in c.points]
    if conv:
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.lineplot(data=pd.DataFrame(conv), x="betas", y="log Z - reference", hue="model",
                     marker="o", errorbar=None, ax=ax)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{ds}: AIS log Z vs number of intermediate distributions\n"
                     "(reference: exact log Z, else the estimate with the most distributions)",
                     fontsize=9)
        figs["AIS convergence"] = _save(fig, outdir / f"{ds}-ais.png")

    metric_cols = [c for c in df.columns if c not in
                   ("model", "seed", "log p(x)", "kind", "view", "train_seconds")]
    if metric_cols:
        shown = metric_cols[:4]
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.5), squeeze=False)
        for ax, m in zip(axes[0], shown):
            sns.scatterplot(data=df, x=m, y="log p(x)", hue="kind", palette=KIND_COLORS,
                            ax=ax, legend=ax is axes[0][0])
        fig.suptitle(f"{ds}: likelihood versus sample metrics (Theis et al. 2016)")
        figs["metric agreement"] = _save(fig, outdir / f"{ds}-agreement.png")
    return figs
