"""Stage report: compile every run's results into reports/ (Markdown, HTML, CSV, figures).

    python -m pipeline.report

Reads results/*/*/seed*/{eval.json,train.json,per_example.npz} (eval.json as a
:class:`pipeline.record.EvalRecord`); writes into reports/ (or the params' ``report_dir``, e.g.
reports/fashion_mnist for configs/fashion.yaml) report.md, report.html, results.csv
(long: one row per dataset, model, seed, metric), pairs.csv (every paired comparison),
metrics.json (strict JSON, for `dvc metrics show`), curves.csv (for `dvc plots show`) and
figures/*.png.  Per dataset and data view, log-likelihoods, lower bounds, upper bounds and
proxies get separate tables, ranked by paired comparisons on the same test examples
(:mod:`pipeline.compare`); sample metrics get their own tables and a legend.  Every report
states its run facts (data sizes per split, how the binary view was made with its seed and
checksum, the evaluation budgets the runs recorded, each model's training length) and the
cost of every train and evaluate stage (wall and CPU seconds, peak memory, with totals).
A hyperparameter-search section gives each run with a tuned file (params ``tuned:``) its
study's budget, space, best validation value and tuned values (:mod:`pipeline.tuning_report`).
Meanwhile a second process sends the runs' pending MLflow calls (pipeline/tracking.py).
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.report")

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import gm
from gm.data import dataset_spec, load_splits
from gm.estimators.raise_ais import SANDWICH_NOTE
from gm.io import InputError, write_text
from pipeline import (common, compare, document, legend, plots, provenance, published, swap,
                      tables, tracking, tuning_report)
from pipeline import params as P
from pipeline.classifier import load_classifier
from pipeline.common import log
from pipeline.record import EvalRecord, sample_metrics_from
from pipeline.tables import DatasetInfo, Summary


GROUP_TITLE = {"likelihood": "log-likelihoods", "lower bound": "lower bounds of log p(x)",
               "upper bound": "upper bounds of log p(x)", "proxy": "proxies (Parzen windows)"}
VIEW_TITLE = {"binary": "binary view", "real": "real view (densities)", "sequence": "sequences"}
GROUP_TEXT = {
    "likelihood": "Test log p(x), exact or estimated (kind 'estimate': a stochastic estimate "
                  "whose bias direction is not guaranteed), in nats per image (higher is "
                  "better) with bits per dimension beside it (-log p(x) / (d ln 2), lower is "
                  "better).",
    "lower bound": "Lower bounds of the test log p(x) (variational or importance-weighted): "
                   "the model's log-likelihood is at least this. Ranked only among lower "
                   "bounds: a higher rank says the bound is higher, not that the model is "
                   "better.",
    "upper bound": "Upper bounds of the test log p(x), ranked only among themselves.",
    "proxy": "Parzen-window scores (Goodfellow et al. 2014): the log-density of a Gaussian "
             "kernel estimate fitted to the model's samples, its width chosen on validation "
             "data. A proxy, not the model's likelihood: it is known to rank models "
             "unreliably (Theis et al. 2016). No bits/dim: it is a density of a Gaussian "
             "mixture, not a probability of the data.",
}
CONDITIONAL_TEXT = ("Conditional log-likelihoods: the mean over predicted frames of "
                    "log p(x_t | x_<t) of each test sequence, in nats per frame, with bits per "
                    "pixel of a frame beside it. Not log p(x) of a whole sequence.")
REAL_TEXT = ("Densities of dequantised grey levels (k + u) / L on [0, 1]^d, not comparable "
             "with the binary view's probabilities. Bits/dim are those of the L grey levels "
             "implied by the density, (d ln L - log p(x)) / (d ln 2): at most that in "
             "expectation over the dequantisation noise (Theis et al. 2016, sec. 3.1).")
BASELINE_TEXT = ("Rows marked (baseline) are reference models scored exactly by the pipeline "
                 "(independent pixels; a mixture of Bernoullis fitted by EM, its number of "
                 "components chosen on the validation split): a model below them has learned "
                 "less about the data than they do.")


def collect(params: dict) -> tuple[list[EvalRecord], list[dict]]:
    """(eval records, train records) of every run listed in params, missing ones skipped."""
    evals, trains = [], []
    for ds, model, seed in common_runs(params):
        d = common.run_dir(ds, model, seed)
        if (d / "eval.json").exists():
            evals.append(EvalRecord.read(d / "eval.json"))
            trains.append(common.read_train_info(d / "train.json"))
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
    return P.runs(params)


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


def baseline_flags(params: dict) -> dict[str, bool]:
    """Run name -> whether its registered model is a reference baseline."""
    return {m: bool(gm.model_class(P.registered_model(params, m)).is_baseline)
            for m in {m for _, m, _ in common_runs(params)}}


def per_example_values(summaries: list[Summary], evals: list[EvalRecord]
                       ) -> tuple[dict[compare.Key, list[np.ndarray]], dict[tuple, str]]:
    """(values for :func:`pipeline.compare.paired`, on the test examples every model of a
    comparison scored; (dataset, model) -> why it is unranked).

    A model is ranked only when every seed has per-example values that agree with its
    eval.json (same count, same mean): a missing or stale per_example.npz leaves it out."""
    mean_of = {(e.dataset, e.model, e.seed): e.test_log_likelihood for e in evals}
    values, unranked = {}, {}
    for s in summaries:
        arrays = []
        for seed in s.seeds:
            loaded = compare.load(common.run_dir(s.dataset, s.model, seed))
            est = mean_of[(s.dataset, s.model, seed)]
            if loaded is None:
                unranked[(s.dataset, s.model)] = f"seed {seed} has no per_example.npz"
                break
            index, v = loaded
            if not np.isfinite(v).all():
                unranked[(s.dataset, s.model)] = f"seed {seed} has non-finite values"
                break
            if len(v) != est.n or not math.isclose(float(v.mean()), est.mean, rel_tol=1e-9,
                                                   abs_tol=1e-9):
                unranked[(s.dataset, s.model)] = (f"seed {seed}: per_example.npz does not "
                                                  "match eval.json (stale)")
                break
            arrays.append((index, v))
        else:
            values[(s.dataset, s.model, s.view, s.group)] = arrays
    return compare.on_common_examples(values), unranked


def dataset_info(ds: str, splits=None) -> DatasetInfo:
    """Pixels per image (frame), grey levels and the known optimum of dataset ``ds``
    (``splits``: its prepared data, read from data/processed when not given)."""
    splits = splits if splits is not None else load_splits(common.processed_path(ds))
    return DatasetInfo(splits.data_dim, splits.levels,
                       dataset_spec(ds).optimum_log_likelihood)


def reference_metrics(ds: str, view: str) -> dict | None:
    """Sample metrics of held-out real data (the reference row), or None."""
    path = common.classifier_path(ds).parent / "reference.json"
    if not path.exists():
        return None
    ref = json.loads(path.read_text())["reference"].get(view)
    return sample_metrics_from(ref, f"{path}: reference.{view}") if ref else None


def classifier_words(ds: str) -> str:
    """The feature space of dataset ``ds``'s sample metrics, for the legend."""
    path = common.classifier_path(ds)
    clf = load_classifier(path) if path.exists() else None
    ref = path.parent / "reference.json"
    acc = json.loads(ref.read_text()).get("classifier", {}) if ref.exists() else {}
    return legend.classifier_text(clf.config.features if clf else None,
                                  clf.config.arch if clf else None, acc)


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


def curves(trains: list[dict]) -> pd.DataFrame:
    rows = []
    for t in trains:
        for h in t["history"]:
            for k, v in h.items():
                if k not in ("epoch", "epoch_seconds"):
                    rows.append({"dataset": t["dataset"], "model": t["model"], "seed": t["seed"],
                                 "epoch": h["epoch"], "metric": k, "value": v})
    return pd.DataFrame(rows)


def strict(obj):
    """``obj`` with every non-finite float replaced by None (valid JSON for strict parsers)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_strict_json(path: Path, obj) -> None:
    write_text(path, json.dumps(strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def metrics_record(summaries: list[Summary], infos: dict[str, DatasetInfo],
                   rank: dict) -> dict:
    """reports/metrics.json: per dataset and model, the headline value with its interval,
    bits/dim, kind, group, rank and mean sample metrics."""
    out: dict[str, dict] = {}
    for s in summaries:
        iv = s.interval()
        rec = {"log_likelihood": s.mean, "ci_low": iv[0] if iv else None,
               "ci_high": iv[1] if iv else None, "kind": s.kind, "method": s.method,
               "group": s.group, "view": s.view, "seeds": len(s.seeds),
               "rank": rank.get((s.dataset, s.view, s.group, s.model)),
               "baseline": s.baseline}
        if s.group != "proxy":
            rec["bits_per_dim"] = tables.bits_per_dim(s.mean, infos[s.dataset], s.view)
        names = sorted({n for m in s.metrics for n in m})
        rec["sample_metrics"] = {n: float(np.mean([m[n].value for m in s.metrics if n in m]))
                                 for n in names}
        out.setdefault(s.dataset, {})[s.model] = rec
    return out


def data_facts(params: dict, loaded: dict) -> list[dict]:
    """What the report states of each dataset with results: split sizes, pixels, grey levels,
    the binarization recorded in its prepared data, the params options, the data checksum."""
    out = []
    for ds, splits in loaded.items():
        out.append({"dataset": ds, "sizes": {s: int(len(v)) for s, v in splits.x.items()},
                    "data_dim": splits.data_dim, "image_shape": tuple(splits.image_shape),
                    "levels": splits.levels, "binarization": splits.binarization,
                    "info": splits.info, "options": params["datasets"].get(ds) or {},
                    "checksum": splits.checksum()})
    return out


FACTS_TEXT = ("What the runs of this report were made from, read from the prepared data "
              "(data/processed/<dataset>.npz) and each run's train.json and eval.json, so it "
              "describes the results shown, not today's params.")
BUDGET_TEXT = ("The evaluation settings (params evaluate: with each model's overrides) as "
               "every eval.json recorded them under budget: the value most runs used, and "
               "the runs that used another. Each model reads only the settings of its "
               "estimator (AIS: ais_*; importance sampling and the IWAE bound: "
               "importance_samples; Parzen: parzen_samples, its width chosen on the "
               "validation split; decoder AIS: decoder_ais_*; diffusion: trajectory_samples "
               "for its importance-weighted bound, bound_samples for the variational bound "
               "beside it).")
EPOCHS_TEXT = ("Each model's training length from its train.json: epochs (full passes over "
               "the training split), minibatch size, parameter updates, measured seconds per "
               "epoch and per training (means over seeds), and how many test examples its "
               "headline value averages.")
COST_TEXT = ("Each train and evaluate stage as its train.json / eval.json record it under "
             "cost: wall seconds from the process's start, CPU seconds (user + system, start-up "
             "and imports included) and the process's peak resident memory. The total sums "
             "wall and CPU seconds over the stages (stages that ran side by side, e.g. with "
             "snakemake --cores 2, overlap, so the pipeline took less wall time) and gives the "
             "largest peak. The fetch, prepare, classifier and report stages are not "
             "included. " + tables.DASH + ": a record made before costs were recorded.")


def facts_blocks(params: dict, evals: list[EvalRecord], trains: list[dict],
                 facts: list[dict]) -> list[tuple]:
    """The "Run facts" section: data sizes per split and binarization (with its seed and
    checksums when drawn), evaluation budgets, training length per model."""
    blocks: list[tuple] = [("h", 2, "Run facts"), ("p", FACTS_TEXT), ("h", 3, "Data")]
    if facts:
        blocks.append(("table", tables.data_table(facts)))
    else:
        blocks.append(("p", "No prepared dataset has results yet."))
    for f in facts:
        b = (f.get("info") or {}).get("binarization") or {}
        if b.get("method") == "stochastic":
            blocks.append(("p", f"{f['dataset']}: binary view drawn once with seed {b.get('seed')}"
                                f" ({b.get('rule')}); sha256 of the drawn arrays "
                                f"({b.get('sha256_of')}): {b.get('sha256')}; sha256 of this "
                                f"run's binary splits: {b.get('splits_sha256')}. Data sha256 "
                                f"(every array of the prepared file): {f['checksum']}."))
    budgets = {f"{e.dataset}/{e.model}" + (f" seed {e.seed}" if len(params["seeds"]) > 1
                                            else ""): e.budget
               for e in evals if e.budget is not None}
    blocks.append(("h", 3, "Evaluation budgets"))
    if budgets:
        order = [f.name for f in dataclasses.fields(P.EvaluateConfig)]
        blocks += [("p", BUDGET_TEXT), ("table", tables.budget_table(budgets, order))]
    unrecorded = sorted({f"{e.dataset}/{e.model}" for e in evals if e.budget is None})
    if unrecorded or not budgets:
        blocks.append(("p", "No recorded budget (an eval.json made before budgets were "
                            "recorded): " + (", ".join(unrecorded) or "no evaluated run") + "."))
    blocks.append(("h", 3, "Training length per model"))
    if trains:
        n_train = {f["dataset"]: f["sizes"].get("train") for f in facts}
        blocks += [("p", EPOCHS_TEXT), ("table", tables.epochs_table(trains, evals, n_train))]
    else:
        blocks.append(("p", "No run has finished training."))
    return blocks


def stage_costs(params: dict, evals: list[EvalRecord]) -> list[dict]:
    """{"dataset", "model", "seed", "stage", "cost"} of every train and evaluate stage whose
    record exists, in params order (train.json of runs not evaluated included)."""
    cost_of = {(e.dataset, e.model, e.seed): e.cost for e in evals}
    rows = []
    for ds, model, seed in common_runs(params):
        d = common.run_dir(ds, model, seed)
        if (d / "train.json").exists():
            try:
                cost = common.read_train_info(d / "train.json").get("cost")
            except InputError:           # unreadable: the failed-runs table says why
                cost = None
            rows.append({"dataset": ds, "model": model, "seed": seed, "stage": "train",
                         "cost": cost if isinstance(cost, dict) else None})
        if (ds, model, seed) in cost_of:
            rows.append({"dataset": ds, "model": model, "seed": seed, "stage": "evaluate",
                         "cost": cost_of[(ds, model, seed)]})
    return rows


def cost_blocks(params: dict, evals: list[EvalRecord]) -> list[tuple]:
    rows = stage_costs(params, evals)
    blocks: list[tuple] = [("h", 2, "Cost per stage")]
    if not rows:
        return blocks + [("p", "No stage has run yet.")]
    return blocks + [("p", COST_TEXT), ("table", tables.cost_table(rows))]


def header(params: dict, evals: list[EvalRecord], fingerprint: dict) -> list[tuple]:
    """The report's title and what every table shares: runs, seeds, provenance, units,
    intervals, ranks."""
    return [
        ("h", 1, "gm-bench report"),
        ("p", f"Runs: {len(evals)} of {len(common_runs(params))} (dataset, model, seed) "
              f"combinations; seeds {params['seeds']} ({len(params['seeds'])} per model)."),
        ("p", f"Provenance fingerprint {fingerprint['sha256'][:16]}: code "
              f"{fingerprint['code'][:12]} (every source file each stage ran), params "
              f"{fingerprint['params'][:12]}, data {fingerprint['data'][:12]} "
              "(pipeline/provenance.py; reports/metrics.json has them whole). The same code, "
              "params and data give this fingerprint; tests/test_report_fingerprint.py checks "
              f"the committed report against the tree. Built at git commit "
              f"{tracking.git_commit()[:12]}" + (" with uncommitted changes (this report is "
              "committed with them)" if tracking.git_dirty() else "") + "."),
        ("p", "Values are per-example test log-likelihoods in nats per image (higher is "
              "better; NLL = -log p(x)) with bits per dimension beside them. Each dataset has "
              "separate tables for log-likelihoods (exact values and estimates), lower bounds, "
              "upper bounds and proxies (Parzen windows), and for the binary view "
              "(probabilities) apart from the real view (densities of grey levels): values of "
              "different tables are not comparable. '95% CI across seeds' is the t-interval of "
              "the mean over seeds, [low, high]."),
        ("p", "Ranks come from paired comparisons: for every two models in one table, the "
              "mean per-example difference on the same test examples (those every model of "
              "the table scored: an estimator that costs per example may score a fixed subset, "
              "budget test_subset) with a hierarchical "
              f"bootstrap 95% interval ({compare.N_RESAMPLES} resamples, seed {compare.SEED}; "
              "each resample draws each model's seeds and, shared by both models, the test "
              "examples with replacement, so the interval includes seed-to-seed variation). "
              "Rank = 1 + the number of models significantly better (interval excluding 0), "
              "so models whose difference is not significant share a rank. Every pair's "
              "difference, interval and number of examples is in pairs.csv."),
    ]


def value_blocks(ds: str, rows: list[Summary], group: str, view: str, info: DatasetInfo,
                 rank: dict[str, int], pairs: pd.DataFrame, unranked: dict,
                 moving: frozenset[str] = frozenset()) -> list[tuple]:
    """Heading, explanation, table and significant pairs of one (view, group); ``rank``:
    model -> rank (unranked models absent); ``moving``: models whose AIS log Z had not
    settled (:func:`pipeline.tables.convergence_table`), named under the table."""
    conditional = view == "sequence" and group == "likelihood"
    title = "conditional log-likelihoods log p(x_t | x_<t)" if conditional \
        else GROUP_TITLE[group]
    text = [CONDITIONAL_TEXT if conditional else GROUP_TEXT[group]]
    if view == "real":
        text.append(REAL_TEXT + f" Here d = {info.data_dim}, L = {info.levels}.")
    elif not conditional:
        text.append(f"Here d = {info.data_dim} pixels.")
    table = tables.value_table(rows, group, view, info, rank)
    if any(s.baseline for s in rows):
        text.append(BASELINE_TEXT)
    if info.optimum is not None and group == "likelihood" and view == "binary":
        text.append("The optimum row is the best average log p(x) any model can reach on this "
                    "data (uniform mass on its distinct patterns).")
    out = [("h", 3, f"{ds}: {title}, {VIEW_TITLE[view]}"), ("p", " ".join(text)),
           ("table", table)]
    notes = []
    if 1 < len(rank):
        sub = pairs[(pairs["dataset"] == ds) & (pairs["view"] == view)
                    & (pairs["group"] == group)]
        better = {m: bs for (d, v, g, m), bs in compare.better_than(sub).items()}
        order = [s.model for s in sorted(rows, key=lambda s: (rank.get(s.model, 1e9), -s.mean))]
        notes.append("Significantly better (paired bootstrap, 95%; every pair in the "
                     "paired-comparisons figure below): "
                     + tables.significant_pairs(order, better) + ".")
    missing = [f"{m} ({why})" for (d, m), why in sorted(unranked.items())
               if d == ds and m in {s.model for s in rows}]
    if missing:
        notes.append(f"Rank {tables.DASH}: not ranked, no usable per-example values: "
                     + "; ".join(missing) + ".")
    if any(len(s.seeds) < 2 for s in rows):
        notes.append(f"95% CI {tables.DASH}: one seed, no interval across seeds.")
    unsettled = sorted(s.model for s in rows if s.model in moving)
    if unsettled:
        notes.append("AIS not converged (log Z still moved between its two runs with the most "
                     f"distributions; see {ds}: AIS convergence): " + ", ".join(unsettled)
                     + ". Their values are likely too high.")
    return out + [("p", " ".join(notes))] if notes else out


def quality_blocks(ds: str, rows: list[Summary], view: str) -> tuple[list[tuple], list[str]]:
    """(blocks of the sample-quality tables of one view, metric names shown)."""
    ref = reference_metrics(ds, view)
    found = tables.quality_tables(rows, ref)
    if not found:
        return [], []
    n = next((m.details.get("n_samples") for s in rows for ms in s.metrics
              for m in ms.values()), None)
    out = [("h", 3, f"{ds}: sample quality, {VIEW_TITLE[view]}"),
           ("p", "Value [bootstrap 95% interval] of each sample metric"
                 + (f", on {n} samples per model" if n else "")
                 + "; directions, meanings and the reference row are explained in the "
                   "legend below. These are measures of samples, not likelihoods.")]
    names = []
    for space, df in found:
        out += [("p", "Classifier-feature metrics (the pipeline's own classifier of this "
                      "dataset, not Inception-v3; see the legend)." if space == "features"
                 else "Pixel-space metrics."), ("table", df)]
        names += [c for c in df.columns if c != "model"]
    return out, names


def dataset_blocks(ds: str, summaries: list[Summary], info: DatasetInfo, pairs: pd.DataFrame,
                   rank: dict, unranked: dict, evals, trains, figdir: Path,
                   params: dict) -> list[tuple]:
    """Every section of dataset ``ds``: value tables per (view, group), the AIS bracket,
    sample quality per view, the metric legend, figures and sample grids."""
    mine = [s for s in summaries if s.dataset == ds]
    views = [v for v in tables.VIEW_ORDER if any(s.view == v for s in mine)]
    views += sorted({s.view for s in mine} - set(views))
    blocks: list[tuple] = [("h", 2, ds)]
    settled = tables.convergence_table(plots.ais_frame(evals, ds))
    moving = frozenset() if settled.empty else frozenset(
        settled.loc[settled["within 2 stderr"] == "no", "model"])
    for view in views:
        for group in tables.GROUP_ORDER:
            rows = [s for s in mine if s.view == view and s.group == group]
            if rows:
                ranks = {s.model: rank[k] for s in rows if (k := (ds, view, group, s.model))
                         in rank}
                blocks += value_blocks(ds, rows, group, view, info, ranks, pairs, unranked,
                                       moving)
    bracket = tables.bracket_table(mine)
    if not bracket.empty:
        blocks += [("h", 3, f"{ds}: AIS sandwich (a stochastic bracket)"),
                   ("p", SANDWICH_NOTE + " Both sides are means over seeds, in nats per "
                         "image."),
                   ("table", bracket)]
    if not settled.empty:
        blocks += [("h", 3, f"{ds}: AIS convergence (is log Z still moving?)"),
                   ("p", tables.CONVERGENCE_NOTE), ("table", settled)]
    shown: list[str] = []
    for view in views:
        qb, names = quality_blocks(ds, [s for s in mine if s.view == view], view)
        blocks += qb
        shown += [n for n in names if n not in shown]
    if shown:
        blocks.append(("h", 3, f"{ds}: metric legend"))
        if any(n in legend.FEATURE_METRICS for n in shown):
            blocks.append(("p", "Classifier features: " + classifier_words(ds) + "."))
        blocks += [("table", legend.legend_table(shown)), ("p", legend.REFERENCE_NOTE)]
    ds_pairs = pairs[pairs["dataset"] == ds] if not pairs.empty else None
    registered = {s.model: P.registered_model(params, s.model) for s in mine}
    for name, fig in plots.dataset_figures(evals, trains, ds, figdir, ds_pairs,
                                           registered=registered, optimum=info.optimum,
                                           pixels=info.data_dim).items():
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
    return blocks


def build(params: dict, out: Path) -> list[tuple]:
    """Write every report file but the documents into the empty folder ``out``; return the
    document's blocks."""
    evals, trains = collect(params)
    figdir = out / "figures"
    figdir.mkdir(parents=True)
    long_table(evals).to_csv(out / "results.csv", index=False)
    curves(trains).to_csv(out / "curves.csv", index=False)
    registered_all = {m: P.registered_model(params, m) for m in params["models"]}
    plots.progress_table(trains, registered_all).to_csv(out / "progress.csv", index=False)

    summaries = tables.summarise(evals, baseline_flags(params))
    values, unranked = per_example_values(summaries, evals)
    pairs = compare.paired(values)
    pairs.to_csv(out / "pairs.csv", index=False)
    rank = compare.ranks(pairs, [(d, v, g, m) for d, m, v, g in values])
    datasets = [ds for ds in params["datasets"] if any(s.dataset == ds for s in summaries)]
    # each prepared dataset read once (Fashion-MNIST's is 0.2 GB)
    loaded = {ds: load_splits(common.processed_path(ds))
              for ds in sorted({d for d, _, _ in P.runs(params)})}
    infos = {ds: dataset_info(ds, loaded[ds]) for ds in datasets}

    fingerprint = provenance.report_fingerprint(
        params, {ds: splits.checksum() for ds, splits in loaded.items()})
    blocks = header(params, evals, fingerprint)
    with_results = {e.dataset for e in evals} | {t["dataset"] for t in trains}
    blocks += facts_blocks(params, evals, trains,
                           data_facts(params, {ds: loaded[ds] for ds in loaded
                                               if ds in with_results}))
    blocks += tuning_report.tuning_blocks(params, figdir)
    for ds in datasets:
        blocks += dataset_blocks(ds, summaries, infos[ds], pairs, rank, unranked, evals,
                                 trains, figdir, params)
    pub = published_table(evals)
    if not pub.empty:
        blocks += [("h", 2, "Published results"),
                   ("p", "Our mean test value next to the paper's (configs/published.csv), "
                         "with its source; differences only mean something between results of "
                         "the same kind, data and architecture."),
                   ("table", _fmt(pub))]
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
    blocks += cost_blocks(params, evals)
    failed = failed_runs(params)
    if not failed.empty:
        blocks += [("h", 2, "Failed or missing runs"), ("table", failed)]
    write_strict_json(out / "metrics.json", metrics_record(summaries, infos, rank)
                      | {"fingerprint": fingerprint})
    return blocks


def run(args, params) -> None:
    # the runs' deferred MLflow calls (and any kept in an outage) go out from a second process
    # while this one builds the report (the pipeline's last step: both cores at work)
    target = P.report_dir(params)
    sender = subprocess.Popen([sys.executable, "-m", "pipeline.tracking", "--replay"],
                              stdout=subprocess.DEVNULL)
    with swap.building(target) as out:       # a kill leaves the previous report whole
        try:
            blocks = build(params, out)
            keep_nested_reports(target, out)
        finally:
            status = sender.wait()   # its log lines come before an error line
        if status != 0:
            log.warning("some MLflow calls could not be sent; they stay pending")
        pending = tracking.pending_summary()
        if pending:
            blocks += [("h", 2, "MLflow calls not yet logged"),
                       ("p", "They wait in each run's mlflow_journal.jsonl; `python -m "
                             "pipeline.tracking --replay` sends them once the cause is fixed."),
                       ("table", pd.DataFrame([{k: p[k] for k in ("run", "calls", "cause")}
                                               for p in pending]))]
        render(blocks, out)
    log.info("wrote %s", target / "report.md")


def keep_nested_reports(target: Path, out: Path) -> None:
    """Carry the reports of other profiles kept inside ``target`` (e.g. reports/fashion_mnist/
    inside reports/) into the folder ``out`` that replaces it, so rebuilding one report never
    deletes another.  Hard links where possible (no copy of the bytes)."""
    if not target.is_dir():
        return
    for sub in sorted(target.iterdir()):
        if (sub.is_dir() and "." not in sub.name and (sub / "report.md").exists()
                and not (out / sub.name).exists()):
            def link(src, dst):
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            shutil.copytree(sub, out / sub.name, copy_function=link)


def render(blocks: list[tuple], out: Path) -> None:
    """Write report.md and the self-contained report.html into ``out``."""
    (out / "report.md").write_text(document.to_markdown(blocks, out))
    (out / "report.html").write_text(document.to_html(blocks, "gm-bench report"))


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0], dataset=False)


if __name__ == "__main__":
    common.process_main(main)
