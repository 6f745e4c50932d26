"""NADE's one-pass conditionals (shared weights, blocked prefix sums, hand-written backward)
equal the naive per-position computation, and their gradients are right."""
from __future__ import annotations

import pytest
import torch

import gm
from gm.models.autoregressive.nade_pass import BLOCK, NADELogits

# d below, at and above one block, and a d that leaves a partial last block
SIZES = [BLOCK // 2 + 1, BLOCK, 2 * BLOCK + 5]


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("ordering", ["natural", "random"])
def test_fast_pass_equals_naive_per_position_computation(ordering, d):
    torch.manual_seed(0)
    model = gm.build("nade", d, n_hidden=9, ordering=ordering).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    for xo in ((torch.rand(20, d, generator=g) < 0.5).double(),
               torch.rand(20, d, generator=g, dtype=torch.float64)):
        fast = model.ordered_logits(xo)
        naive = model.naive_ordered_logits(xo)
        torch.testing.assert_close(fast, naive, rtol=1e-12, atol=1e-12)
        with torch.no_grad():                        # the path that keeps one block only
            torch.testing.assert_close(model.ordered_logits(xo), fast, rtol=0, atol=0)
    x = xo[:, torch.argsort(model.order)]            # data coordinates of the same vectors
    torch.testing.assert_close(model.conditional_logits(x)[:, model.order], naive,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", SIZES)
def test_hand_written_backward_matches_finite_differences(d):
    """torch.autograd.gradcheck of every input, the data included (the autoregressive-property
    test back-propagates into x)."""
    g = torch.Generator().manual_seed(d)
    H, n = 4, 3
    inputs = [(torch.rand(n, d, generator=g) < 0.5).double(),
              *(torch.randn(*shape, generator=g, dtype=torch.float64)
                for shape in ((H, d), (H,), (d, H), (d,)))]
    assert torch.autograd.gradcheck(NADELogits.apply,
                                    [t.requires_grad_(True) for t in inputs])


def test_first_conditional_is_the_bias_path_only():
    """p(x_o0 = 1) = sigmoid(b_0 + V_0 . sigmoid(c)), whatever x is."""
    torch.manual_seed(0)
    model = gm.build("nade", 6, n_hidden=4).double()
    x = (torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    expected = model.b[0] + model.V[0] @ torch.sigmoid(model.c)
    torch.testing.assert_close(model.ordered_logits(x)[:, 0], expected.expand(5))


def test_weights_are_shared_across_positions():
    d, H = 10, 7
    model = gm.build("nade", d, n_hidden=H)
    assert model.n_parameters() == 2 * d * H + H + d


@pytest.mark.parametrize("name", ["nade", "fvsbn"])
def test_test_set_is_scored_in_batches_with_the_same_values(name):
    """log_likelihood and the completion extra go budget.batch_size examples at a time (NADE's
    (d, n, H) activations would hold 16 GB for 10,000 28x28 test images): per-example values
    do not depend on the batch size."""
    from gm.base import Budget
    torch.manual_seed(0)
    model = gm.build(name, 12, **({"n_hidden": 9} if name == "nade" else {})).double()
    x = (torch.rand(23, 12, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    out = {}
    for size in (5, 500):
        budget = Budget(batch_size=size)
        ll = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), budget=budget)
        extra = model.extras(x, generator=torch.Generator().manual_seed(0), budget=budget)
        out[size] = (ll.values, extra.metrics["log_p_second_half_given_first"])
    torch.testing.assert_close(out[5][0], out[500][0], rtol=1e-12, atol=1e-12)
    assert out[5][0].shape == (23,)
    assert out[5][1] == pytest.approx(out[500][1], rel=1e-12)
