"""Paired comparisons (pipeline/compare.py) on cases with a known answer."""
import numpy as np
import pandas as pd
import pytest

from gm.base import KINDS
from pipeline import compare

N = 400


def noise(seed: int, n: int = N, scale: float = 3.0) -> np.ndarray:
    """Per-example log-likelihoods that vary a lot from example to example (like real ones)."""
    return -20.0 + scale * np.random.default_rng(seed).standard_normal(n)


def key(model: str, group: str = "likelihood", view: str = "binary", ds: str = "digits"):
    return (ds, model, view, group)


def row(pairs: pd.DataFrame, a: str, b: str) -> pd.Series:
    return pairs[(pairs["a"] == a) & (pairs["b"] == b)].iloc[0]


def test_identical_models_are_not_significantly_different_and_share_a_rank():
    x = noise(0)
    seeds = [x, x + 0.1, x - 0.1]
    pairs = compare.paired({key("a"): seeds, key("b"): [s.copy() for s in seeds]})
    r = row(pairs, "a", "b")
    assert r["mean_diff"] == 0.0 and not r["significant"]
    assert r["low"] <= 0.0 <= r["high"]
    ranks = compare.ranks(pairs)
    assert ranks[("digits", "binary", "likelihood", "a")] == \
        ranks[("digits", "binary", "likelihood", "b")] == 1


def test_a_model_better_by_one_nat_per_example_is_significant_and_ranked_first():
    # per-example spread 3 nats, seed-to-seed spread 0.1: the pairing removes the spread
    base = [noise(s) for s in range(3)]
    better = [b + 1.0 + 0.1 * i for i, b in enumerate(base)]
    pairs = compare.paired({key("worse"): base, key("better"): better})
    r = row(pairs, "better", "worse")
    assert r["mean_diff"] == pytest.approx(1.1)
    assert r["significant"] and 0.0 < r["low"] < 1.1 < r["high"] < 2.0
    back = row(pairs, "worse", "better")       # the reversed pair: the same interval, negated
    assert back["mean_diff"] == pytest.approx(-1.1) and back["significant"]
    assert back["low"] == pytest.approx(-r["high"]) and back["high"] == pytest.approx(-r["low"])
    ranks = compare.ranks(pairs)
    assert ranks[("digits", "binary", "likelihood", "better")] == 1
    assert ranks[("digits", "binary", "likelihood", "worse")] == 2
    assert compare.better_than(pairs) == {("digits", "binary", "likelihood", "better"):
                                          ["worse"]}


def test_seed_variation_widens_the_interval():
    """A model whose seeds disagree (+3 and -1 nats around a middle model, whose seeds agree)
    is not significantly different from it, although its seed-averaged values are better by
    exactly 1 nat on every example (which, as one seed, is significant)."""
    x = noise(1)
    middle = [x, x.copy()]
    spread = [x + 3.0, x - 1.0]
    pairs = compare.paired({key("spread"): spread, key("middle"): middle})
    r = row(pairs, "spread", "middle")
    assert r["mean_diff"] == pytest.approx(1.0) and not r["significant"]
    # beyond the seeds' range [-1, 3]: 2 seeds' spread widened by sqrt(S / (S - 1))
    assert r["low"] < -1.5 and r["high"] > 3.5
    averaged = compare.paired({key("spread"): [x + 1.0], key("middle"): middle})
    assert row(averaged, "spread", "middle")["significant"]


def test_non_significant_differences_share_a_rank_and_the_rank_counts_better_models():
    x = noise(2)
    values = {key("a"): [x + 1.0, x + 1.02], key("b"): [x + 1.01, x + 0.99],
              key("c"): [x, x + 0.01], key("d"): [x - 5.0, x - 5.0]}
    ranks = compare.ranks(compare.paired(values))
    got = {k[3]: r for k, r in ranks.items()}
    assert got == {"a": 1, "b": 1, "c": 3, "d": 4}


def test_only_comparable_results_are_paired():
    x = noise(3)
    values = {key("exact_model"): [x], key("bound", group="lower bound"): [x + 5],
              key("parzen", group="proxy"): [x + 9], key("grbm", view="real"): [x + 60],
              key("other", ds="bars_stripes"): [x[:16]]}
    pairs = compare.paired(values)
    assert pairs.empty and list(pairs.columns) == list(compare.COLUMNS)
    ranks = compare.ranks(pairs, [(d, v, g, m) for d, m, v, g in values])
    assert set(ranks.values()) == {1}, "a model alone in its group is ranked 1"
    assert set(compare.GROUPS) == set(KINDS)
    assert compare.GROUPS["exact"] == compare.GROUPS["estimate"] == "likelihood"
    assert len(set(compare.GROUPS.values())) == len(KINDS) - 1


def test_the_same_values_give_the_same_intervals_and_the_seed_changes_them():
    values = {key("a"): [noise(4), noise(5)], key("b"): [noise(6) + 0.3, noise(7)]}
    first, again = compare.paired(values), compare.paired(values)
    pd.testing.assert_frame_equal(first, again)
    other = compare.paired(values, seed=compare.SEED + 1)
    assert not np.allclose(first["low"], other["low"])
    assert first.attrs["n_resamples"] == compare.N_RESAMPLES


def test_the_interval_matches_the_paired_standard_error_for_one_seed():
    """One seed each: the bootstrap interval is about mean_diff +- 1.96 sd(x - y) / sqrt(n),
    the paired standard error (unpaired resampling would be ten times wider here)."""
    x = noise(8)
    y = x - 0.2 + 0.5 * np.random.default_rng(9).standard_normal(N)
    pairs = compare.paired({key("a"): [x], key("b"): [y]}, n_resamples=4000)
    r = row(pairs, "a", "b")
    half = 1.96 * np.std(x - y, ddof=1) / np.sqrt(N)
    assert (r["high"] - r["low"]) / 2 == pytest.approx(half, rel=0.1)


def test_different_test_sets_are_refused():
    with pytest.raises(ValueError, match="same test examples"):
        compare.paired({key("a"): [noise(0)], key("b"): [noise(1, n=N - 1)]})


def test_models_scored_on_a_test_subset_are_paired_on_the_common_examples():
    """An estimator that costs per example scores the first m test examples (budget
    test_subset); the comparison uses exactly the examples every model of the group scored,
    whatever order the files list them in."""
    full = noise(8)
    prefix = np.arange(150)
    values = {key("all"): [(np.arange(N), full)],
              key("subset"): [(prefix, full[:150] + 0.5)],
              key("reversed"): [(np.arange(N)[::-1].copy(), full[::-1] - 0.25)],
              key("other_ds", ds="bars_stripes"): [(np.arange(7), np.zeros(7))]}
    common = compare.on_common_examples(values)
    assert [len(v[0]) for v in common.values()] == [150, 150, 150, 7]
    np.testing.assert_array_equal(common[key("all")][0], full[:150])
    np.testing.assert_array_equal(common[key("reversed")][0], full[:150] - 0.25)
    pairs = compare.paired(common)
    r = row(pairs, "subset", "all")
    assert r["n"] == 150 and r["mean_diff"] == pytest.approx(0.5) and r["significant"]
    assert row(pairs, "all", "reversed")["mean_diff"] == pytest.approx(0.25)
    # disjoint examples: nothing to pair, nothing ranked against each other
    apart = compare.on_common_examples({key("a"): [(np.arange(5), np.zeros(5))],
                                        key("b"): [(np.arange(5, 9), np.ones(4))]})
    assert compare.paired(apart).empty
