"""MADE (Germain et al. 2015): masks, order-agnostic training and the ensemble mixture."""
from __future__ import annotations

import math

import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError



def build(d=10, **kw):
    torch.manual_seed(0)
    return gm.build("made", d, **{"hidden_sizes": [30, 20], "n_masks": 4, **kw}).double()


def test_degrees_follow_germain_et_al():
    d = 10
    model = build(d)
    for k in range(4):
        assert sorted(model.input_degrees[k].tolist()) == list(range(1, d + 1))
        low = 1
        for l in range(2):
            deg = getattr(model, f"hidden_degrees_{l}")[k]
            assert deg.min() >= low and deg.max() <= d - 1
            low = int(deg.min())
    assert torch.equal(model.ordering(0), torch.arange(d))           # mask 0: raster order
    orders = {tuple(model.ordering(k).tolist()) for k in range(4)}
    assert len(orders) == 4                                           # distinct orderings


def test_agnosticism_switches():
    same_order = build(order_agnostic=False)
    assert all(torch.equal(same_order.ordering(k), torch.arange(10)) for k in range(4))
    assert not torch.equal(same_order.hidden_degrees_0[0], same_order.hidden_degrees_0[1])
    same_conn = build(connectivity_agnostic=False)
    assert all(torch.equal(same_conn.hidden_degrees_1[k], same_conn.hidden_degrees_1[0])
               for k in range(4))
    assert len({tuple(same_conn.ordering(k).tolist()) for k in range(4)}) == 4


def test_ensemble_is_the_mixture_over_masks():
    model = build()
    budget = Budget(ensemble_masks=3)                 # an evaluation setting, not a model field
    x = (torch.rand(40, 10, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    per_mask = torch.stack([model.log_prob_mask(x, k) for k in range(3)])
    mixture = torch.logsumexp(per_mask, 0) - math.log(3)
    ll = model.log_likelihood(x, generator=torch.Generator(), budget=budget)
    torch.testing.assert_close(ll.values, mixture)
    assert ll.kind == "exact" and ll.info["ensemble_masks"] == 3
    assert (ll.values >= per_mask.mean(0) - 1e-12).all()          # Jensen
    assert (ll.values - per_mask[0]).abs().max() > 1e-3             # not just one mask
    # 0 (the default) averages all n_masks; the sampler follows prepare_evaluation's budget
    every = model.log_likelihood(x, generator=torch.Generator(), budget=Budget())
    assert every.info["ensemble_masks"] == 4 and model.n_eval_masks == 4
    model.prepare_evaluation(x, generator=torch.Generator(), budget=budget)
    assert model.n_eval_masks == 3
    torch.testing.assert_close(model.log_prob(x), mixture)
    with pytest.raises(ConfigError, match="^ensemble_masks: "):
        model.log_likelihood(x, generator=torch.Generator(), budget=Budget(ensemble_masks=5))


def test_training_visits_the_masks_in_turn():
    model = build(lr=0.01)
    x = (torch.rand(16, 10, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        assert int(model.mask_step) == step
        with torch.no_grad():
            expected = -model.log_prob_mask(x, step % 4).mean()
        assert math.isclose(model.fit_step(x, generator=g)["nll"], float(expected), rel_tol=1e-9)


def test_tiny_dimensions_are_normalised():
    from gm.estimators.exact import binary_states
    for d in (1, 2):
        model = build(d)
        with torch.no_grad():
            p = model.log_prob(binary_states(d, dtype=torch.float64)).exp()
        assert abs(float(p.sum()) - 1) < 1e-12


def test_cached_masks_follow_a_loaded_state():
    """Masks are cached per mask index; loading another model's degrees must replace them."""
    torch.manual_seed(0)
    a = gm.build("made", 10, hidden_sizes=[16], n_masks=3)
    torch.manual_seed(1)
    b = gm.build("made", 10, hidden_sizes=[16], n_masks=3)
    before = [m.clone() for m in b.masks(2)]
    b.load_state_dict(a.state_dict())
    assert any(not torch.equal(x, y) for x, y in zip(before, b.masks(2)))
    for x, y in zip(a.masks(2), b.masks(2)):
        assert torch.equal(x, y)
