"""Generalized denoising autoencoder: stationary chain on a known mixture, walk-back, clamping."""
import pytest
import torch
import torch.nn.functional as F

import gm
from gm.base import Budget
from gm.errors import ConfigError
from gm.estimators.parzen import DEFAULT_GRID, parzen_log_likelihood
from gm.models.chains.base import run_chain, salt_and_pepper

PATTERNS = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0],
                         [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1],
                         [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0],
                         [0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0]], dtype=torch.float32)
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1])


def mixture(n, gen):
    return PATTERNS[torch.multinomial(WEIGHTS, n, replacement=True, generator=gen)]


def trained_dae(steps=800, **kw):
    torch.manual_seed(0)
    model = gm.build("dae", PATTERNS.shape[1], n_hidden=64, corruption=0.2, lr=3e-3, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.fit_step(mixture(64, gen), generator=gen)
    return model


def test_chain_stationary_mass_on_data_patterns():
    """Bengio et al. 2013, thm. 1: the four-step chain's stationary distribution estimates the
    data distribution; on a 4-pattern mixture its states must be the patterns, in proportion."""
    model = trained_dae()
    gen = torch.Generator().manual_seed(2)
    state, _ = run_chain(model.chain_step, model.base_rate.sample(100, gen), 100, gen)  # burn-in
    hits = torch.zeros(len(PATTERNS))
    total = 0
    for _ in range(100):
        state, _ = model.chain_step(state, gen)
        eq = (state.unsqueeze(1) == PATTERNS).all(2)            # (200, 4)
        hits += eq.sum(0)
        total += state.shape[0]
    on_patterns = float(hits.sum()) / total
    freq = hits / hits.sum()
    p = model.base_rate.mean()
    independent = float((PATTERNS * p + (1 - PATTERNS) * (1 - p)).prod(1).sum())
    assert independent < 0.05          # the chain's start (independent pixels) is not the answer
    assert on_patterns > 0.8, f"only {on_patterns:.2f} of chain states are data patterns"
    assert (freq > 0.02).all(), f"a pattern is never visited: {freq}"
    tv = 0.5 * float((freq - WEIGHTS).abs().sum())
    assert tv < 0.25, f"pattern frequencies {freq} vs mixture weights {WEIGHTS} (TV {tv:.2f})"


def test_walkback_one_is_the_denoising_criterion():
    model = trained_dae(steps=0, walkback=1)
    x = mixture(32, torch.Generator().manual_seed(0))
    terms, inputs = model.walkback_terms(x, torch.Generator().manual_seed(5))
    x_tilde = salt_and_pepper(x, model.config.corruption, torch.Generator().manual_seed(5))
    expected = F.binary_cross_entropy_with_logits(model.reconstruction_logits(x_tilde), x,
                                                  reduction="sum") / x.shape[0]
    assert len(terms) == 1 and torch.equal(inputs[0], x_tilde)
    assert torch.allclose(terms[0], expected, rtol=1e-5)


def test_walkback_changes_the_objective():
    """20.11.3: k stochastic encode-decode steps from the example, every reconstruction of the
    example penalised.  The first term is the one-step criterion; later ones reconstruct x from
    corruptions of the chain's own samples, which wander further from x."""
    one = trained_dae(steps=0, walkback=1)
    wb = trained_dae(steps=0, walkback=4)
    wb.load_state_dict(one.state_dict())
    x = mixture(256, torch.Generator().manual_seed(0))
    t1, _ = one.walkback_terms(x, torch.Generator().manual_seed(7))
    tk, inputs = wb.walkback_terms(x, torch.Generator().manual_seed(7))
    assert len(tk) == 4
    assert torch.equal(t1[0], tk[0])
    # replay the chain by hand: x~_k ~ C(x*_{k-1}), x*_k ~ P(x | x~_k)
    gen = torch.Generator().manual_seed(7)
    x_star = x
    for k in range(4):
        x_tilde = salt_and_pepper(x_star, wb.config.corruption, gen)
        assert torch.equal(x_tilde, inputs[k])
        logits = wb.reconstruction_logits(x_tilde)
        term = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        assert torch.allclose(tk[k], term, rtol=1e-5)
        x_star = (torch.rand(x.shape, generator=gen) < torch.sigmoid(logits)).float()
    dist = [float((inp != x).float().sum(1).mean()) for inp in inputs]
    assert dist[-1] > dist[0] + 1.0, f"walk-back corruptions not further from x: {dist}"
    # the objective, and so the update, differ
    loss1 = torch.stack(t1).mean()
    lossk = torch.stack(tk).mean()
    g1 = torch.autograd.grad(loss1, one.decoder.weight)[0]
    gk = torch.autograd.grad(lossk, wb.decoder.weight)[0]
    assert not torch.allclose(g1, gk, atol=1e-4)
    assert float(lossk.detach()) > float(loss1.detach())


def test_inpainting_keeps_the_observed_half_and_completes_the_rest():
    model = trained_dae()
    x = mixture(100, torch.Generator().manual_seed(3))
    ex = model.extras(x, generator=torch.Generator().manual_seed(4), budget=Budget())
    img = ex.images["inpainting"]
    assert img.shape == (30, x.shape[1])
    half = x.shape[1] // 2
    assert torch.equal(img[20:, :half], x[:10, :half])           # clamped
    assert torch.equal(img[10:20, half:], torch.full((10, x.shape[1] - half), 0.5))
    # patterns differ in their top halves, so the completion is determined: nearly perfect
    assert ex.metrics["inpainting_pixel_accuracy"] > 0.9
    assert ex.images["chain"].shape == (100, x.shape[1])
    assert [r["steps"] for r in ex.tables["chain_length"]][0] == 1


def test_parzen_proxy_is_labelled_and_reproducible():
    model = trained_dae(steps=50)
    x = mixture(20, torch.Generator().manual_seed(3))
    b = Budget(parzen_samples=500)
    a = model.log_likelihood(x, generator=torch.Generator().manual_seed(1), budget=b)
    c = model.log_likelihood(x, generator=torch.Generator().manual_seed(1), budget=b)
    assert a.kind == "proxy" and a.method == "parzen" and a.values.shape == (20,)
    assert torch.equal(a.values, c.values)


@pytest.mark.parametrize("bad", [{"corruption": 0.0}, {"corruption": 1.0}, {"walkback": 0},
                                 {"n_hidden": 0}, {"parzen_sigma": 0.25}, {"bogus": 1}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        gm.build("dae", 12, **bad)


@pytest.mark.parametrize("name, hparams", [("dae", {"n_hidden": 32}), ("cae", {"n_hidden": 16}),
                                           ("gsn", {"hidden": [16, 8], "walkback": 2})])
def test_prepare_evaluation_picks_the_best_grid_sigma_on_validation(name, hparams):
    """Goodfellow et al. 2014 protocol, shared with the implicit generators: sigma maximises the
    validation Parzen log density over the grid, is checkpointed, and is then used on test data."""
    torch.manual_seed(0)
    model = gm.build(name, PATTERNS.shape[1], sample_steps=20, lr=3e-3, **hparams)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        model.fit_step(mixture(64, gen), generator=gen)
    x_val, x_test = mixture(60, gen), mixture(40, gen)
    budget = Budget(parzen_samples=400, parzen_sigma=0.25)

    before = model.log_likelihood(x_test, generator=torch.Generator().manual_seed(2), budget=budget)
    assert before.info["sigma_from_validation"] == 0.0
    assert before.info["sigma"] == budget.parzen_sigma                # the labelled fallback
    cross = model.log_likelihood(x_test, generator=torch.Generator().manual_seed(2),
                                 budget=Budget(parzen_samples=400))   # no fallback: cross-fit
    assert cross.info["sigma_from_validation"] == 0.0 and "sigma_even_rows" in cross.info

    model.prepare_evaluation(x_val, generator=torch.Generator().manual_seed(3), budget=budget)
    sigma = float(model.parzen_sigma)
    centers = model.parzen_centers(400, torch.Generator().manual_seed(3))
    assert centers.shape == (400, PATTERNS.shape[1])
    mean_ll = {s: float(parzen_log_likelihood(x_val, centers, s).mean()) for s in DEFAULT_GRID}
    assert sigma in DEFAULT_GRID and mean_ll[sigma] == max(mean_ll.values())
    assert DEFAULT_GRID[0] < sigma < DEFAULT_GRID[-1], "the validation optimum is interior"

    after = model.log_likelihood(x_test, generator=torch.Generator().manual_seed(4), budget=budget)
    assert (after.kind, after.info["sigma"], after.info["sigma_from_validation"]) == \
        ("proxy", sigma, 1.0)
    ref = parzen_log_likelihood(x_test, model.parzen_centers(400, torch.Generator().manual_seed(4)),
                                sigma)
    assert torch.allclose(after.values, ref)
    assert float(model.state_dict()["parzen_sigma"]) == sigma           # saved with the checkpoint


def test_dae_walkback_is_registered_with_walkback_training():
    """The one-step vs walk-back comparison of 20.11.3: "dae_walkback" differs only in walkback."""
    one = gm.build("dae", 12, n_hidden=8)
    wb = gm.build("dae_walkback", 12, n_hidden=8)
    assert one.config.walkback == 1 and wb.config.walkback > 1
    terms, _ = wb.walkback_terms(mixture(8, torch.Generator().manual_seed(0)),
                                 torch.Generator().manual_seed(1))
    assert len(terms) == wb.config.walkback
