"""Paired comparisons of models on the same test examples, and the ranks they imply.

Two results are comparable when they score the same dataset, data view and comparability
group (:data:`GROUPS`: exact values and estimates of log p(x) together; lower bounds, upper
bounds and proxies each among themselves).  Their per-example test values
(``results/D/M/seedS/per_example.npz``: ``test_log_likelihood`` (n,) and ``test_index`` (n,),
the examples' positions in the test split) are then paired by example, on the examples every
model of the group scored (:func:`on_common_examples`: an estimator that costs per example may
score a fixed subset of the test split, budget ``test_subset``).

The mean difference a - b (nats per image) gets a hierarchical bootstrap interval that
includes seed-to-seed variation (Davison & Hinkley 1997, sec. 3.8, resampling at both
stages): each replicate draws each model's seeds with replacement and, shared by every model
of the group, the test examples with replacement; the difference of the two resampled means
is one replicate.  The 95% percentile interval (Efron & Tibshirani 1993, ch. 13) is
significant when it excludes 0.  Resampling S seeds with replacement gives their mean a
variance (S - 1) / S times the unbiased s^2 / S, a large shortfall for 2-3 seeds, so each
seed's values are first moved away from the seed mean by sqrt(S / (S - 1)) (the adjusted
top-stage resampling of Davison & Hinkley 1997, sec. 3.8): the seed side of the interval
then has the usual variance.  With few seeds the seed distribution is still coarse (2 seeds:
3 distinct resampled means), so an interval is only as good as the seeds behind it.

:func:`ranks`: rank = 1 + the number of models significantly better, so models whose
difference is not significant share a rank (a partial order, not a strict ranking).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gm.base import KINDS
from pipeline.record import TEST_INDEX, read_per_example

N_RESAMPLES = 2000          # bootstrap replicates of every comparison
SEED = 14                   # fixed: the same per-example values give the same report
LEVEL = 0.95
CHUNK = 250                 # replicates drawn at once (memory: CHUNK x n test examples)
PER_EXAMPLE = "per_example.npz"
COLUMNS = ("dataset", "view", "group", "a", "b", "n", "mean_diff", "low", "high", "significant")

# the comparability group of each kind: a bound is never ranked against an estimate
GROUPS: dict[str, str] = {k: "likelihood" if k in ("exact", "estimate") else k.replace("_", " ")
                          for k in KINDS}

Key = tuple[str, str, str, str]          # (dataset, model, view, group)


def _replicate_means(values: Sequence[np.ndarray], example_w: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """One model's resampled mean per replicate, (R,).

    values: per seed, (n,) per-example values; example_w: (R, n) example multiplicities / n
    (shared by every model of the comparison, which pairs the examples)."""
    a = np.stack([np.asarray(v, dtype=np.float64) for v in values])        # (S, n)
    s = len(a)
    if s > 1:                          # resampled seed means get the unbiased variance
        centre = a.mean(axis=0)
        a = centre + math.sqrt(s / (s - 1)) * (a - centre)
    seed_w = rng.multinomial(s, np.full(s, 1.0 / s), size=len(example_w)) / s   # (R, S)
    return ((seed_w @ a) * example_w).sum(axis=1)


def _example_weights(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) multiplicities / n of R draws of n test examples with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples) / n


def paired(per_example: Mapping[Key, Sequence[np.ndarray]], *, n_resamples: int = N_RESAMPLES,
           seed: int = SEED, level: float = LEVEL) -> pd.DataFrame:
    """Every ordered pair of comparable results: mean difference a - b and its interval.

    Parameters
    ----------
    per_example: (dataset, model, view, group) -> per seed, (n,) per-example test values in
        nats, test-split order (the same n examples for every model of a dataset and view).
    n_resamples, seed, level: bootstrap replicates, the fixed seed of their draws, coverage.

    Returns
    -------
    DataFrame with :data:`COLUMNS`, one row per ordered pair (a, b), a != b: n = the test
    examples paired; mean_diff =
    mean over a's seeds and the examples minus the same of b (nats per image); [low, high] the
    hierarchical bootstrap percentile interval; significant when it excludes 0.  ``attrs``
    records n_resamples, seed and level.
    """
    groups: dict[tuple[str, str, str], dict[str, Sequence[np.ndarray]]] = defaultdict(dict)
    for (ds, model, view, group), values in per_example.items():
        if len(values):
            groups[(ds, view, group)][model] = values
    rows = []
    tail = (1 - level) / 2
    for (ds, view, group), models in sorted(groups.items()):
        sizes = {m: {len(v) for v in vs} for m, vs in models.items()}
        if len(set().union(*sizes.values())) != 1:
            raise ValueError(f"{ds}, {view} view, {group}: per-example values of different "
                             f"lengths {sizes}; every model must score the same test examples")
        n = next(iter(sizes.values())).pop()
        if n == 0:                 # no test example that every model scored
            continue
        # one stream per group: a model's comparisons do not depend on other groups
        rng = np.random.default_rng([seed, *map(ord, f"{ds}/{view}/{group}")])
        names = sorted(models)
        reps: dict[str, list[np.ndarray]] = {m: [] for m in names}
        for size in np.diff(np.r_[0:n_resamples:CHUNK, n_resamples]):  # bounded memory
            example_w = _example_weights(n, int(size), rng)
            for m in names:
                reps[m].append(_replicate_means(models[m], example_w, rng))
        reps = {m: np.concatenate(r) for m, r in reps.items()}
        point = {m: float(np.mean([np.mean(v) for v in models[m]])) for m in names}
        for a in names:
            for b in names:
                if a == b:
                    continue
                low, high = np.quantile(reps[a] - reps[b], [tail, 1 - tail])
                rows.append({"dataset": ds, "view": view, "group": group, "a": a, "b": b,
                             "n": n, "mean_diff": point[a] - point[b], "low": float(low),
                             "high": float(high), "significant": bool(low > 0 or high < 0)})
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    out.attrs |= {"n_resamples": n_resamples, "seed": seed, "level": level}
    return out


def ranks(pairs: pd.DataFrame, members: Iterable[tuple[str, str, str, str]] = ()
          ) -> dict[tuple[str, str, str, str], int]:
    """(dataset, view, group, model) -> 1 + number of models significantly better.

    ``members``: further (dataset, view, group, model) keys to rank (a model alone in its
    group has no pairs; it gets rank 1)."""
    out = {(r.dataset, r.view, r.group, m): 1
           for r in pairs.itertuples(index=False) for m in (r.a, r.b)}
    out |= {k: 1 for k in members if k not in out}
    for r in pairs.itertuples(index=False):
        if r.significant and r.mean_diff > 0:    # a significantly better than b
            out[(r.dataset, r.view, r.group, r.b)] += 1
    return out


def better_than(pairs: pd.DataFrame) -> dict[tuple[str, str, str, str], list[str]]:
    """(dataset, view, group, model) -> the models it is significantly better than."""
    out: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for r in pairs.itertuples(index=False):
        if r.significant and r.mean_diff > 0:
            out[(r.dataset, r.view, r.group, r.a)].append(r.b)
    return out


def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(test_index (n,) int64, per-example test values (n,) float64) of one run, or None when
    it has no per_example.npz."""
    path = Path(run_dir) / PER_EXAMPLE
    if not path.exists():
        return None
    arrays = read_per_example(path)
    return arrays[TEST_INDEX], arrays["test_log_likelihood"]


def on_common_examples(per_example: Mapping[Key, Sequence[tuple[np.ndarray, np.ndarray]]]
                       ) -> dict[Key, list[np.ndarray]]:
    """The input of :func:`paired`: every (dataset, model, view, group) -> per seed, its values
    on the test examples that every run of its (dataset, view, group) scored, in test-split
    order.  per_example: key -> per seed, (test_index (n,), values (n,))."""
    common: dict[tuple[str, str, str], set] = {}
    for (ds, _, view, group), runs in per_example.items():
        for index, _ in runs:
            shared = common.setdefault((ds, view, group), set(index.tolist()))
            shared &= set(index.tolist())
    out = {}
    for (ds, model, view, group), runs in per_example.items():
        keep = np.array(sorted(common[(ds, view, group)]), dtype=np.int64)
        out[(ds, model, view, group)] = [_select(index, values, keep) for index, values in runs]
    return out


def _select(index: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """values at the test examples ``keep`` (sorted, each present in ``index``)."""
    order = np.argsort(index, kind="stable")
    return values[order[np.searchsorted(index[order], keep)]]
