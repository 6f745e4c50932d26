"""Sample-quality metrics against known answers (issue 7)."""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gm.data import dataset_spec
from gm.metrics import METRICS, reference_metrics, sample_metrics
from gm.metrics.bootstrap import bootstrap, bootstrap_arrays
from gm.metrics.classifier import ClassifierConfig, train_classifier
from gm.metrics.frechet import fid, frechet_distance, gaussian_stats
from gm.metrics.inception import inception_score, inception_score_from_logits
from gm.metrics.kernel import (gaussian_kernel, kid, median_bandwidth, mmd2_gaussian,
                               mmd2_unbiased, polynomial_kernel)
from gm.metrics.memorization import memorization
from gm.metrics.precision_recall import (KNNManifolds, density_coverage, knn_radii,
                                         precision_recall)


@pytest.fixture(scope="module")
def digits():
    return dataset_spec("digits").prepare(None)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gaussian(n, d, seed, mean=0.0, scale=1.0):
    return mean + scale * torch.randn(n, d, generator=gen(seed), dtype=torch.float64)


# --- Frechet distance ----------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    x = gaussian(500, 8, 0)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + np.eye(5), b @ b.T + 0.5 * np.eye(5)     # non-commuting covariances
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    cross = scipy.linalg.sqrtm(c1 @ c2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert frechet_distance(t(m1), t(c1), t(m2), t(c2)) == pytest.approx(expected, rel=1e-8)
    # diagonal covariances: |m1 - m2|^2 + sum (s1 - s2)^2
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 3.0])
    d = frechet_distance(t(np.zeros(3)), t(np.diag(s1**2)), t(np.ones(3)), t(np.diag(s2**2)))
    assert d == pytest.approx(3 + np.sum((s1 - s2) ** 2), rel=1e-10)


def test_fid_of_two_gaussian_samples_approaches_closed_form():
    x = gaussian(20000, 4, 1)
    y = gaussian(20000, 4, 2, mean=0.5, scale=2.0)
    expected = 4 * 0.5**2 + 4 * (1 - 2) ** 2            # |dmu|^2 + sum (s1 - s2)^2 = 5
    assert fid(x, y) == pytest.approx(expected, rel=0.05)


def test_weighted_gaussian_stats_equal_repeated_rows():
    x = gaussian(30, 3, 3)
    w = torch.bincount(torch.randint(30, (30,), generator=gen(4)), minlength=30)
    mu_w, cov_w = gaussian_stats(x, w)
    xr = x[torch.repeat_interleave(torch.arange(30), w)]
    assert torch.allclose(mu_w, xr.mean(0))
    assert torch.allclose(cov_w, torch.cov(xr.T))


# --- kernel distances ----------------------------------------------------------------------
def brute_mmd2_u(k, x, y):
    """Gretton et al. (2012) eq. 3 by explicit loops."""
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(kxx + kyy - 2 * kxy)


def test_mmd2_unbiased_matches_definition():
    x, y = gaussian(7, 3, 5), gaussian(6, 3, 6, mean=0.3)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    got = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    assert got == pytest.approx(brute_mmd2_u(k, x, y), rel=1e-10)


def test_weighted_mmd2_leaves_out_pairs_of_copies():
    """With multiplicities, within-set sums run over draws of different original points."""
    x, y = gaussian(5, 2, 7), gaussian(4, 2, 8)
    wx, wy = torch.tensor([2.0, 0, 1, 1, 1]), torch.tensor([0.0, 3, 1, 0])
    ix, iy = torch.repeat_interleave(torch.arange(5), wx.long()), \
        torch.repeat_interleave(torch.arange(4), wy.long())

    def within(z, idx):
        vals = [float(gaussian_kernel(z[a:a + 1], z[b:b + 1], 1.0)) for a in idx for b in idx
                if a != b]
        return sum(vals) / len(vals)

    cross = float(gaussian_kernel(x[ix], y[iy], 1.0).mean())
    expected = within(x, ix.tolist()) + within(y, iy.tolist()) - 2 * cross
    got = mmd2_unbiased(gaussian_kernel(x, x, 1.0), gaussian_kernel(y, y, 1.0),
                        gaussian_kernel(x, y, 1.0), wx, wy)
    assert got == pytest.approx(expected, rel=1e-10)


def test_mmd2_of_identical_distributions_is_zero_on_average():
    vals = torch.tensor([mmd2_gaussian(gaussian(40, 5, 2 * s), gaussian(40, 5, 2 * s + 1), 2.0)
                         for s in range(200)])
    assert abs(float(vals.mean())) < 3 * float(vals.std()) / math.sqrt(len(vals))
    shifted = mmd2_gaussian(gaussian(400, 5, 1), gaussian(400, 5, 2, mean=0.5), 2.0)
    assert shifted > 10 * float(vals.std()) * 40 / 400      # null sd shrinks like 1/n


def test_median_bandwidth():
    x = torch.tensor([[0.0], [1.0], [3.0]])            # distances 1, 2, 3
    assert median_bandwidth(x) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="identical"):
        median_bandwidth(torch.zeros(4, 2))


def test_kid_same_distribution_within_its_standard_error_and_positive_otherwise():
    same = kid(gaussian(600, 16, 10), gaussian(600, 16, 11), generator=gen())
    assert same.n_subsets == 10 and same.subset_se > 0
    assert abs(same.value) < 3 * same.subset_se
    diff = kid(gaussian(600, 16, 10), gaussian(600, 16, 12, mean=0.3), generator=gen())
    assert diff.value > 5 * diff.subset_se


# --- precision and recall ------------------------------------------------------------------
def test_precision_recall_of_data_against_itself_is_one():
    x = gaussian(300, 6, 13)
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_of_disjoint_and_collapsed_sets():
    real = gaussian(300, 2, 14)
    assert precision_recall(real + 100.0, real) == (0.0, 0.0)
    # mode collapse: every sample a real point, but only one of them -> precision 1, recall low
    collapsed = real[:1].repeat(300, 1)
    p, r = precision_recall(collapsed, real)
    assert p == 1.0 and r < 0.05


def test_knn_radii_match_brute_force_with_and_without_multiplicities():
    x = gaussian(40, 3, 15)
    d = torch.cdist(x, x)
    w = torch.bincount(torch.randint(40, (40,), generator=gen(16)), minlength=40).double()
    for k in (1, 3, 5):
        expected = torch.sort(d + torch.diag(torch.full((40,), math.inf)), dim=1).values[:, k - 1]
        assert torch.allclose(knn_radii(d, k), expected)
        r = knn_radii(d, k, w)
        for i in range(40):
            if w[i] == 0:
                assert r[i] == -math.inf
                continue
            others = sorted(float(d[i, j]) for j in range(40) if j != i
                            for _ in range(int(w[j])))     # neighbours with multiplicity
            assert float(r[i]) == pytest.approx(others[k - 1])


def test_precision_counts_exact_duplicates_as_neighbours():
    """On data with few distinct patterns precision is the fraction of valid patterns."""
    patterns = torch.eye(4, dtype=torch.float64)
    real = patterns.repeat(10, 1)
    fake = torch.cat([patterns.repeat(5, 1), torch.full((20, 4), 0.5, dtype=torch.float64)])
    p, r = precision_recall(fake, real)
    assert p == 0.5 and r == 1.0


# --- density and coverage (Naeem et al. 2020) ---------------------------------------------
def brute_density_coverage(fake, real, k, w_fake=None, w_real=None):
    """Naeem et al. (2020) eqs. (3), (4) by explicit loops, points counted with multiplicity."""
    w_fake = torch.ones(len(fake)) if w_fake is None else w_fake
    w_real = torch.ones(len(real)) if w_real is None else w_real
    r = knn_radii(torch.cdist(real, real), k, w_real.double())
    held = covered = 0.0
    for j in range(len(fake)):
        held += float(w_fake[j]) * sum(float(w_real[i]) for i in range(len(real))
                                       if float(torch.dist(fake[j], real[i])) <= float(r[i]))
    for i in range(len(real)):
        covered += float(w_real[i]) * any(float(w_fake[j]) > 0 and
                                          float(torch.dist(fake[j], real[i])) <= float(r[i])
                                          for j in range(len(fake)))
    return held / (k * float(w_fake.sum())), covered / float(w_real.sum())


def test_density_coverage_match_the_definition_with_and_without_multiplicities():
    fake, real = gaussian(30, 3, 30, mean=0.3), gaussian(40, 3, 31)
    for k in (1, 3):
        d, c = density_coverage(fake, real, k)
        bd, bc = brute_density_coverage(fake, real, k)
        assert d == pytest.approx(bd, rel=1e-12) and c == pytest.approx(bc, rel=1e-12)
    wf = torch.bincount(torch.randint(30, (30,), generator=gen(32)), minlength=30).double()
    wr = torch.bincount(torch.randint(40, (40,), generator=gen(33)), minlength=40).double()
    r = KNNManifolds(fake, real, 3)(wf, wr)
    bd, bc = brute_density_coverage(fake, real, 3, wf, wr)
    assert r["density"] == pytest.approx(bd, rel=1e-12)
    assert r["coverage"] == pytest.approx(bc, rel=1e-12)


def test_density_coverage_of_identical_and_of_far_apart_sets():
    x = gaussian(300, 6, 13)
    # identical sets: every real ball holds its own point and its k neighbours
    assert density_coverage(x, x, k=3) == (pytest.approx(4 / 3), 1.0)
    assert density_coverage(x + 100.0, x) == (0.0, 0.0)


def test_density_coverage_of_two_samples_of_one_distribution():
    """Naeem et al. (2020), sec. 3.2: E density = 1 and, for M = N, E coverage about 1 - 2^-k."""
    a, b = gaussian(2000, 2, 1), gaussian(2000, 2, 2)
    for k in (1, 3, 5):
        d, c = density_coverage(a, b, k)
        assert d == pytest.approx(1.0, abs=0.05), k
        assert c == pytest.approx(1 - 2.0**-k, abs=0.03), k


def test_samples_piled_on_one_real_point_have_high_density_and_low_coverage():
    """A real point seen 20 times (balls of radius 0 around each copy): samples that all copy
    it sit in at least its 20 balls, density >= 20 / k, while they cover few real balls."""
    spread = gaussian(200, 2, 34)
    real = torch.cat([spread, spread[:1].repeat(19, 1)])          # spread[0] 20 times
    fake = spread[:1].repeat(300, 1)
    d, c = density_coverage(fake, real, k=3)
    held = (torch.cdist(spread[:1], real)[0] <= knn_radii(torch.cdist(real, real), 3)).sum()
    assert d == pytest.approx(float(held) / 3) and d >= 20 / 3
    assert c == pytest.approx(float(held) / len(real)) and c < 0.15
    p, r = precision_recall(fake, real)
    assert p == 1.0 and r < 0.15


# --- inception score -----------------------------------------------------------------------
def test_inception_score_of_uniform_one_hot_predictions_is_n_classes():
    probs = torch.eye(7).repeat(5, 1)
    assert inception_score(probs) == pytest.approx(7.0, rel=1e-12)
    assert inception_score(torch.eye(7)[[2] * 30]) == pytest.approx(1.0)
    assert inception_score_from_logits(torch.zeros(10, 7)) == pytest.approx(1.0)


# --- memorisation --------------------------------------------------------------------------
def test_memorization_flags_copies_of_training_data(digits):
    s = digits
    train, test = s.r["train"], s.r["test"]
    copies = memorization(torch.tensor(train[:300]), torch.tensor(test), torch.tensor(train))
    assert copies["memorization_ratio"] == 0.0 and copies["copy_fraction"] == 1.0
    assert copies["copy_fraction_test"] == 0.0                  # dequantised: no exact repeats
    fresh = memorization(torch.tensor(s.r["val"]), torch.tensor(test), torch.tensor(train))
    assert 0.85 < fresh["memorization_ratio"] < 1.15 and fresh["copy_fraction"] == 0.0


# --- bootstrap -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["percentile", "normal"])
def test_bootstrap_interval_covers_the_true_mean(method):
    covered = 0
    for s in range(60):
        x = 3.0 + torch.randn(100, generator=gen(100 + s), dtype=torch.float64)
        iv = bootstrap(lambda w: float((w * x).sum() / w.sum()), [100], n_boot=200,
                       generator=gen(s), method=method)["value"]
        assert iv.ci_low < iv.value < iv.ci_high
        assert iv.se == pytest.approx(1 / math.sqrt(100), rel=0.3)
        covered += iv.ci_low <= 3.0 <= iv.ci_high
    assert covered >= 51            # 95% nominal; P(<= 50 of 60 | p = 0.95) < 0.01


def test_bootstrap_is_seeded_and_arrays_form_agrees_with_weights_form():
    x, y = gaussian(80, 3, 20), gaussian(60, 3, 21, mean=0.2)
    a = bootstrap_arrays(fid, [x, y], n_boot=20, generator=gen(5))
    b = bootstrap_arrays(fid, [x, y], n_boot=20, generator=gen(5))
    c = bootstrap(lambda wx, wy: fid(x, y, wx, wy), [80, 60], n_boot=20, generator=gen(5))
    assert a == b
    assert a.value == pytest.approx(c["value"].value)
    assert a.ci_low == pytest.approx(c["value"].ci_low)
    assert a.ci_high == pytest.approx(c["value"].ci_high)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap(lambda w: 0.0, [5], n_boot=1, generator=gen())


# --- the pipeline's API --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_classifier(digits):
    return train_classifier(digits.r["train"], digits.y["train"], n_classes=10,
                            image_shape=(8, 8), generator=gen(),
                            config=ClassifierConfig(epochs=3))


ENTRY_KEYS = {"value", "ci_low", "ci_high", "se", "level", "n_boot", "ci_method", "better",
              "space", "n_samples", "n_reference"}


def test_sample_metrics_shape_floor_and_determinism(digits, small_classifier):
    heldout, test, train = digits.r["val"], digits.r["test"], digits.r["train"]
    ref = reference_metrics(heldout, test, train, small_classifier, generator=1, n_boot=20)
    assert set(ref) == set(METRICS) - {"precision_pixel", "recall_pixel", "density_pixel",
                                        "coverage_pixel"}
    for name, e in ref.items():
        assert ENTRY_KEYS <= set(e), name
        assert e["ci_low"] <= e["value"] <= e["ci_high"], name
        assert e["better"] == METRICS[name].better and e["n_samples"] == len(heldout)
    assert {"subset_se", "n_subsets"} <= set(ref["kid"]) and ref["mmd_pixel"]["kernel"]
    json.dumps(ref, allow_nan=False)                  # plain JSON for eval.json
    # bad samples (independent pixels at the data's mean) score worse than held-out data
    p = torch.tensor(train).mean(0)
    noise = (torch.rand(1000, 64, generator=gen(2)) < p).float()
    bad = sample_metrics(noise, test, train, small_classifier, generator=1, n_boot=20)
    for name in ("fid", "mmd_pixel"):
        assert bad[name]["ci_low"] > ref[name]["ci_high"], name
    assert bad["kid"]["ci_low"] > 0 and bad["kid"]["value"] > ref["kid"]["value"]
    assert bad["nn_train_samples"]["ci_low"] > ref["nn_train_samples"]["ci_high"]
    assert bad["precision"]["value"] < ref["precision"]["ci_low"]
    again = sample_metrics(noise, test, train, small_classifier, generator=1, n_boot=20)
    assert again == bad


def test_sample_metrics_without_classifier_are_pixel_metrics(digits):
    bs = dataset_spec("bars_stripes").prepare(None)
    ref = reference_metrics(bs.x["val"], bs.x["test"], bs.x["train"], None,
                            generator=gen(), n_boot=10)
    assert all(e["space"] == "pixels" for e in ref.values())
    assert ref["precision_pixel"]["value"] == 1.0 and ref["recall_pixel"]["value"] == 1.0
    assert ref["coverage_pixel"]["value"] == 1.0 and ref["coverage_pixel"]["k"] == 3
    # few distinct patterns: every real ball has radius 0 and holds the copies of its pattern,
    # so density = mean over samples of (test copies of the sample's pattern) / k, far above 1
    test = torch.tensor(bs.x["test"])
    copies = (torch.cdist(torch.tensor(bs.x["val"]), test) == 0).sum(1).double()
    assert ref["density_pixel"]["value"] == pytest.approx(float(copies.mean()) / 3)
    assert ref["density_pixel"]["value"] > 5
    assert "memorization_ratio" not in ref          # every test pattern is in train: undefined
    assert ref["copy_fraction_test"]["value"] == 1.0


def test_sample_metrics_reject_bad_input(digits):
    x = np.array(digits.x["test"])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="samples: contains NaN"):
        sample_metrics(bad, x, x, None, generator=0, n_boot=2)
    with pytest.raises(ValueError, match="test: expected 64 columns"):
        sample_metrics(x, x[:, :16], x, None, generator=0, n_boot=2)
