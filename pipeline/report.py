"""Stage report: compile every run's results into reports/ (Markdown, HTML, CSV, figures).

    python -m pipeline.report

Reads results/*/*/seed*/{eval.json,train.json} (eval.json as a
:class:`pipeline.record.EvalRecord`); writes reports/report.md, report.html,
results.csv (long: one row per dataset, model, seed, metric), metrics.json (for
`dvc metrics show`), curves.csv (for `dvc plots show`) and figures/*.png.
Log-likelihoods are ranked only among results of comparable kind on the same data view.
Meanwhile a second process sends the runs' pending MLflow calls (pipeline/tracking.py).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gm.base import KINDS, mean_stderr
from gm.io import atomic_path, write_json, write_text
from pipeline import common, document, plots, published, tracking
from pipeline.common import log
from pipeline.record import EvalRecord, SampleMetric, sample_metrics_from

OUT = Path("reports")
# which kinds may be ranked against each other (a bound never against an estimate):
# exact values and estimates of log p(x) together, every other kind among itself
COMPARABLE = {k: "likelihood" if k in ("exact", "estimate") else k.replace("_", " ")
              for k in KINDS}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def collect(params: dict) -> tuple[list[EvalRecord], list[dict]]:
    """(eval records, train records) of every run listed in params, missing ones skipped."""
    evals, trains = [], []
    for ds, model, seed in common_runs(params):
        d = common.run_dir(ds, model, seed)
        if (d / "eval.json").exists():
            evals.append(EvalRecord.read(d / "eval.json"))
            trains.append(json.loads((d / "train.json").read_text()))
        else:
            log.warning("no eval.json for %s: shown as missing", d)
    return evals, trains


def failed_runs(params) -> pd.DataFrame:
    """Runs without an eval.json, with the error their training recorded (if any)."""
    rows = []
    for ds, model, seed in common_runs(params):
        d = common.run_dir(ds, model, seed)
        if (d / "eval.json").exists():
            continue
        err = json.loads((d / "failed.json").read_text())["error"] if (d / "failed.json").exists() \
            else "no eval.json (not run, or failed before training ended; see logs/)"
        rows.append({"dataset": ds, "model": model, "seed": seed, "status": "failed",
                     "error": err})
    return pd.DataFrame(rows)


def common_runs(params):
    from pipeline.params import runs
    return runs(params)


def long_table(evals: list[EvalRecord]) -> pd.DataFrame:
    """One row per (dataset, model, seed, metric), with the estimator's method and kind."""
    rows = []
    for e in evals:
        base = {"dataset": e.dataset, "model": e.model, "seed": e.seed}
        ll = e.test_log_likelihood
        rows.append(base | {"metric": "test_log_likelihood", "value": ll.mean,
                            "stderr": ll.stderr, "method": ll.method, "kind": ll.kind})
        if (b := e.log_likelihood_bounds) is not None:
            for side, rec in (("lower", b.lower), ("upper", b.upper)):
                rows.append(base | {"metric": f"test_log_likelihood_{side}", "value": rec.mean,
                                    "stderr": rec.stderr, "method": ll.method,
                                    "kind": f"{side}_bound"})
        for name, m in e.sample_metrics.items():
            rows.append(base | {"metric": name, "value": m.value, "ci_low": m.ci_low,
                                "ci_high": m.ci_high})
        for name, v in e.extras.metrics.items():
            rows.append(base | {"metric": f"extra_{name}", "value": v})
        for name, v in (("train_seconds", e.timing.train_seconds),
                        ("eval_seconds", e.timing.eval_seconds),
                        ("n_parameters", e.n_parameters)):
            rows.append(base | {"metric": name, "value": float(v)})
    return pd.DataFrame(rows)


def seed_interval(values: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval across seeds); half-width nan for one seed."""
    n = len(values)
    if n < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), T95.get(n - 1, 1.96) * mean_stderr(torch.from_numpy(values))


def headline(evals: list[EvalRecord], dataset: str) -> pd.DataFrame:
    """Per-model summary on one dataset: log-likelihood (mean +- 95% CI over seeds), the
    within-run stderr, estimator, kind, rank within comparable kinds, cost and size."""
    rows = []
    by_model: dict[str, list[EvalRecord]] = {}
    for e in evals:
        if e.dataset == dataset:
            by_model.setdefault(e.model, []).append(e)
    for model, es in sorted(by_model.items()):
        ll = np.array([e.test_log_likelihood.mean for e in es])
        mean, half = seed_interval(ll)
        first = es[0].test_log_likelihood
        row = {"model": model, "view": es[0].data_view,
               "log p(x) [nats]": mean, "95% CI (seeds)": half,
               "stderr (within run)": float(np.mean([e.test_log_likelihood.stderr for e in es])),
               "estimator": first.method, "kind": first.kind, "seeds": len(es)}
        bounds = [e.log_likelihood_bounds for e in es if e.log_likelihood_bounds is not None]
        if bounds:
            row["sandwich [lower, upper]"] = (
                f"[{np.mean([b.lower.mean for b in bounds]):.3f}, "
                f"{np.mean([b.upper.mean for b in bounds]):.3f}]")
        row |= metric_cells([e.sample_metrics for e in es])
        row["train s"] = float(np.mean([e.timing.train_seconds for e in es]))
        row["parameters"] = int(es[0].n_parameters)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["group"] = df["kind"].map(COMPARABLE)
    df["rank"] = (df.groupby(["view", "group"])["log p(x) [nats]"]
                  .rank(ascending=False, method="min").astype(int))
    df["rank"] = df["rank"].astype(str) + " of " + df["group"] + " (" + df["view"] + ")"
    df = df.drop(columns="group").sort_values(["view", "kind", "log p(x) [nats]"],
                                              ascending=[True, True, False])
    refs = [r for v in sorted(df["view"].unique()) if (r := reference_row(dataset, v))]
    if refs:
        df = pd.concat([df, pd.DataFrame(refs)], ignore_index=True)
    return df.astype({"seeds": "Int64", "parameters": "Int64"})


HEADLINE_METRICS = ("fid", "kid", "precision", "recall", "inception_score", "mmd_pixel",
                    "precision_pixel", "recall_pixel", "memorization_ratio")


def metric_cells(records: list[dict[str, SampleMetric]],
                 names=HEADLINE_METRICS) -> dict[str, str]:
    """"value [lo, hi]" per metric: means over seeds of the value and of its bootstrap 95% CI."""
    cells = {}
    for name in names:
        ms = [r[name] for r in records if name in r]
        if ms:
            v, lo, hi = (float(np.mean([getattr(m, k) for m in ms]))
                         for k in ("value", "ci_low", "ci_high"))
            cells[name] = f"{v:.3g} [{lo:.3g}, {hi:.3g}]"
    return cells


def reference_row(ds: str, view: str) -> dict | None:
    """Held-out real data scored like a model (the floor of every sample metric)."""
    path = common.classifier_path(ds).parent / "reference.json"
    if not path.exists():
        return None
    ref = json.loads(path.read_text())["reference"].get(view)
    if not ref:
        return None
    return {"model": "reference (held-out data)", "view": view} | metric_cells(
        [sample_metrics_from(ref, f"{path}: reference.{view}")])


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    return out


def validation_table(evals: list[EvalRecord]) -> pd.DataFrame:
    rows = []
    for e in evals:
        for v in e.estimator_validation.values():
            rows.append({"dataset": e.dataset, "model": e.model, "seed": e.seed,
                         "estimator": v.estimate.method, "kind": v.estimate.kind,
                         "estimate": v.estimate.mean, "stderr": v.estimate.stderr,
                         "reference": v.reference_method, "reference kind": v.reference_kind,
                         "estimate - reference": v.difference})
    return pd.DataFrame(rows)


def published_table(evals: list[EvalRecord]) -> pd.DataFrame:
    """Every published number for a (dataset, model) we ran, beside our mean over seeds."""
    ours: dict[tuple, list[EvalRecord]] = {}
    for e in evals:
        ours.setdefault((e.dataset, e.model), []).append(e)
    rows = []
    for (ds, model), es in sorted(ours.items()):
        mean = float(np.mean([e.test_log_likelihood.mean for e in es]))
        kind = es[0].test_log_likelihood.kind
        for pub in published.published_rows(ds, model):
            rows.append({"dataset": ds, "model": model, "ours": mean, "our kind": kind,
                         "published": pub["value"], "published kind": pub["kind"],
                         "ours - published": mean - pub["value"], "setting": pub["setting"],
                         "source": pub["source"]})
    return pd.DataFrame(rows)


def sandwich_table(evals: list[EvalRecord]) -> pd.DataFrame:
    """AIS sandwiches: RAISE lower and AIS upper stochastic bounds and their gap, per run."""
    return pd.DataFrame([
        {"dataset": e.dataset, "model": e.model, "seed": e.seed,
         "lower (RAISE)": b.lower.mean, "upper (AIS)": b.upper.mean, "gap": b.gap}
        for e in evals if (b := e.log_likelihood_bounds) is not None])


def curves(trains: list[dict]) -> pd.DataFrame:
    rows = []
    for t in trains:
        for h in t["history"]:
            for k, v in h.items():
                if k not in ("epoch", "epoch_seconds"):
                    rows.append({"dataset": t["dataset"], "model": t["model"], "seed": t["seed"],
                                 "epoch": h["epoch"], "metric": k, "value": v})
    return pd.DataFrame(rows)


def build(params: dict) -> list[tuple]:
    evals, trains = collect(params)
    figdir = OUT / "figures"
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir(parents=True)
    table = long_table(evals)
    with atomic_path(OUT / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    curve_df = curves(trains)
    with atomic_path(OUT / "curves.csv") as tmp:
        curve_df.to_csv(tmp, index=False)
    datasets = list(params["datasets"])
    blocks: list[tuple] = [
        ("h", 1, "gm-bench report"),
        ("p", f"Runs: {len(evals)} of {len(common_runs(params))} (dataset, model, seed) "
              f"combinations; seeds {params['seeds']}; git commit {tracking.git_commit()[:12]}. "
              "log p(x) is the per-example test log-likelihood in nats (higher is better; "
              "NLL = -log p(x)). The 95% CI is a t-interval across seeds; the within-run stderr "
              "is the standard error of the estimator on the test set. Ranks compare only "
              "results of comparable kind on the same data view: exact values and estimates of "
              "log p(x) together; lower bounds, upper bounds and proxies (Parzen windows) each "
              "among themselves. Real-view results are densities of dequantised grey levels "
              "and are not comparable with binary-view probabilities."),
    ]
    metrics_json = {}
    for ds in datasets:
        df = headline(evals, ds)
        if df.empty:
            continue
        metrics_json[ds] = {r["model"]: {"log_likelihood": r["log p(x) [nats]"],
                                         "kind": r["kind"]} for r in df.to_dict("records")}
        blocks += [("h", 2, f"{ds}: headline table"),
                   ("p", "Sample metrics: value [bootstrap 95% interval], means over seeds, "
                         "computed on as many samples as the validation split has images; the "
                         "reference row scores that held-out data itself."),
                   ("table", _fmt(df))]
        for name, fig in plots.dataset_figures(evals, trains, ds, figdir).items():
            blocks.append(("img", fig, f"{ds}: {name}"))
        blocks.append(("h", 3, f"{ds}: samples"))
        for e in sorted((e for e in evals if e.dataset == ds), key=lambda e: (e.model, e.seed)):
            if e.seed != params["seeds"][0]:
                continue
            src = common.run_dir(ds, e.model, e.seed)
            for png in [src / "samples.png", *sorted(src.glob("extra_*.png"))]:
                dst = figdir / f"{ds}-{e.model}-{png.stem}.png"
                shutil.copyfile(png, dst)
                blocks.append(("img", dst, f"{e.model} {png.stem.replace('extra_', '')}"))
    pub = published_table(evals)
    if not pub.empty:
        blocks += [("h", 2, "Published results"),
                   ("p", "Our mean test value next to the paper's (configs/published.csv), "
                         "with its source; differences only mean something between results of "
                         "the same kind, data and architecture."),
                   ("table", _fmt(pub))]
    sw = sandwich_table(evals)
    if not sw.empty:
        blocks += [("h", 2, "AIS sandwiches"),
                   ("p", "Forward AIS gives a stochastic upper bound on log p(x) (its log Z is a "
                         "stochastic lower bound); reverse AIS (RAISE, Burda et al. 2015) a "
                         "stochastic lower bound. The gap measures how far the annealing is "
                         "from converged."),
                   ("table", _fmt(sw))]
    val = validation_table(evals)
    exact = val[val["reference kind"] == "exact"] if not val.empty else val
    other = val[val["reference kind"] != "exact"] if not val.empty else val
    blocks.append(("h", 2, "Estimator validation"))
    if exact.empty:
        blocks.append(("p", "No model small enough for exact enumeration reported a stochastic "
                            "estimator beside it."))
    else:
        blocks += [("p", "Each stochastic estimator run beside the exact value on the same "
                         "model and test data, in this pipeline's own run."),
                   ("table", _fmt(exact))]
    if not other.empty:
        blocks += [("h", 3, "Further estimators beside the headline (no exact reference)"),
                   ("p", "Differences here compare two estimators, neither exact (e.g. decoder "
                         "AIS under a Gaussian observation model next to a Parzen proxy)."),
                   ("table", _fmt(other))]
    failed = failed_runs(params)
    if not failed.empty:
        blocks += [("h", 2, "Failed or missing runs"), ("table", failed)]
    write_json(OUT / "metrics.json", metrics_json)
    return blocks


def run(args, params) -> None:
    # the runs' deferred MLflow calls (and any kept in an outage) go out from a second process
    # while this one builds the report (the pipeline's last step: both cores at work)
    sender = subprocess.Popen([sys.executable, "-m", "pipeline.tracking", "--replay"],
                              stdout=subprocess.DEVNULL)
    blocks = build(params)
    if sender.wait() != 0:
        log.warning("some MLflow calls could not be sent; they stay pending")
    pending = tracking.pending_runs()
    if pending:
        blocks.append(("p", "MLflow: calls of these runs are not yet logged (store unreachable):"
                            " " + ", ".join(map(str, pending))))
    write_text(OUT / "report.md", document.to_markdown(blocks, OUT))
    write_text(OUT / "report.html", document.to_html(blocks, "gm-bench report"))
    log.info("wrote %s", OUT / "report.md")


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0], dataset=False)


if __name__ == "__main__":
    sys.exit(main())
