"""Properties every binary autoregressive net must have (book 20.10.7-20.10.10).

Exact normalisation over all 2^d states, the autoregressive property by back-propagation per
output, samplers that match the exact probabilities, determinism and exact resume.
"""
from __future__ import annotations


import pytest
import torch
from scipy.stats import chisquare

import gm
from gm.base import Budget
from gm.errors import ConfigError
from gm.estimators.exact import binary_states
from gm.models.autoregressive.base import allowed_dependencies, dependency_matrix, sample_in_order


# (name, hyperparameters): small versions of every binary model, incl. random orderings and
# MADE ensembles over several orderings/connectivities
CASES = [
    ("fvsbn", {}),
    ("fvsbn", {"ordering": "random"}),
    ("neural_ar", {"n_hidden": 3}),
    ("neural_ar", {"n_hidden": 2, "direct": False, "ordering": "random"}),
    ("nade", {"n_hidden": 7}),
    ("nade", {"n_hidden": 5, "ordering": "random"}),
    ("made", {"hidden_sizes": [24], "n_masks": 1}),
    ("made", {"hidden_sizes": [24, 16], "n_masks": 4}),
    ("made", {"hidden_sizes": [24], "n_masks": 3, "order_agnostic": False}),
    ("made", {"hidden_sizes": [24], "n_masks": 3, "connectivity_agnostic": False}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]


def random_model(name: str, d: int, seed: int = 0, **kw) -> gm.GenerativeModel:
    """A double-precision model whose parameters are all perturbed (no trivial zeros)."""
    torch.manual_seed(seed)
    model = gm.build(name, d, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def per_mask(model):
    """(ordering, logits function) of each autoregressive component of the model."""
    if model.name == "made":
        return [(model.ordering(k), lambda x, k=k: model.conditional_logits(x, k))
                for k in range(model.n_eval_masks)]
    return [(model.order, model.conditional_logits)]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_probabilities_sum_to_one(name, kw):
    d = 11
    model = random_model(name, d, **kw)
    ll = model.log_likelihood(binary_states(d, dtype=torch.float64),
                              generator=torch.Generator(), budget=Budget())
    assert ll.kind == "exact" and ll.method == "exact"
    assert abs(float(ll.values.exp().sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_autoregressive_property_by_backprop(name, kw):
    d = 10
    model = random_model(name, d, **kw)
    x = torch.rand(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for order, logits in per_mask(model):
        dep = dependency_matrix(logits, x)
        allowed = allowed_dependencies(order)
        assert not (dep & ~allowed).any(), "an output depends on a later input"
        if name == "made":  # sparse random connectivity: most, not all, allowed pairs
            assert dep.sum() >= 0.5 * allowed.sum()
        else:               # every allowed dependency is realised
            assert torch.equal(dep, allowed)


def test_dependency_check_detects_a_violation():
    d = 5
    order = torch.arange(d)
    W = torch.randn(d, d, dtype=torch.float64)   # dense: output 0 depends on input 4
    dep = dependency_matrix(lambda x: x @ W.T, torch.rand(d, dtype=torch.float64))
    assert (dep & ~allowed_dependencies(order)).any()


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_samples_follow_the_exact_distribution(name, kw):
    d, n = 4, 40000
    model = random_model(name, d, seed=3, **kw)
    with torch.no_grad():  # tame the perturbation so that no state is vanishingly rare
        for p in model.parameters():
            p.mul_(0.5)
    states = binary_states(d, dtype=torch.float64)
    p = model.log_likelihood(states, generator=torch.Generator(), budget=Budget()).values.exp()
    x = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, d) and set(x.unique().tolist()) <= {0.0, 1.0}
    counts = torch.bincount((x.long() << torch.arange(d)).sum(1), minlength=2**d)
    assert chisquare(counts.numpy(), (n * p).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name,kw", [c for c in CASES if c[0] != "made"],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] != "made"])
def test_incremental_sampler_equals_generic_sampler(name, kw):
    """The model's own O(cost of one pass) sampler draws exactly what d passes would."""
    model = random_model(name, 9, **kw)
    with torch.no_grad():
        fast = model.sample_ordered(50, torch.Generator().manual_seed(5))
        slow = sample_in_order(model.ordered_logits, 50, 9, torch.Generator().manual_seed(5),
                               dtype=torch.float64)
    assert torch.equal(fast, slow)


def train(name, kw, steps, seed=0):
    torch.manual_seed(seed)
    model = gm.build(name, 8, **{"lr": 0.01, **kw})
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(64, 8, generator=torch.Generator().manual_seed(9)) < 0.3).float()
    data[:, 4:] = data[:, :4]                     # structure to learn: x_{4+i} = x_i
    metrics = [model.fit_step(data[torch.randint(64, (16,), generator=g)], generator=g)
               for _ in range(steps)]
    return model, g, data, metrics


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_training_improves_likelihood_and_is_deterministic(name, kw):
    m1, g1, data, metrics1 = train(name, kw, 60)
    m2, g2, _, metrics2 = train(name, kw, 60)
    assert metrics1 == metrics2
    assert torch.equal(m1.sample(7, generator=g1), m2.sample(7, generator=g2))
    torch.manual_seed(0)
    fresh = gm.build(name, 8, **{"lr": 0.01, **kw})
    with torch.no_grad():
        assert m1.log_prob(data).mean() > fresh.log_prob(data).mean() + 0.5


@pytest.mark.parametrize("name,bad", [
    ("fvsbn", {"lr": 0.0}), ("fvsbn", {"ordering": "backwards"}), ("nade", {"n_hidden": 0}),
    ("neural_ar", {"n_hidden": 0}), ("nade", {"weight_decay": -1.0}),
    ("made", {"hidden_sizes": []}), ("made", {"hidden_sizes": [8, 0]}), ("made", {"n_masks": 0}),
    ("made", {"n_masks": 2, "order_agnostic": False, "connectivity_agnostic": False}),
    ("gaussian_ar", {"lr": -1.0}), ("nade", {"no_such_key": 1})])
def test_bad_config_names_the_field(name, bad):
    with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: "):   # the field, no yaml path
        gm.build(name, 8, **bad)


def test_completions_keep_the_given_half_and_score_exact_conditionals():
    d = 6
    model = random_model("nade", d, n_hidden=4)
    x = binary_states(d, dtype=torch.float64)[[5, 40, 63]]
    ex = model.extras(x, generator=torch.Generator().manual_seed(0), budget=Budget())
    shown = ex.images["completions"]
    assert shown.shape == (6, d) and torch.equal(shown[3:, :3], x[:, :3])
    # log p(x_{3:} | x_{:3}) = log p(x) - log sum_{x'_{3:}} p(x_{:3}, x'_{3:})
    states = binary_states(d, dtype=torch.float64)
    logp = model.log_prob(states).detach()
    prefix = (states[:, :3] * torch.tensor([1.0, 2, 4], dtype=torch.float64)).sum(1).long()
    log_marg = torch.stack([torch.logsumexp(logp[prefix == v], 0) for v in range(8)])
    idx = [5, 40, 63]
    expected = (logp[idx] - log_marg[prefix[idx]]).mean()
    assert abs(ex.metrics["log_p_second_half_given_first"] - float(expected)) < 1e-10
