"""Neural autoregressive network (Bengio & Bengio 2000): per-position hidden groups."""
from __future__ import annotations

import torch

import gm
from gm.models.autoregressive.base import dependency_matrix



def random_model(d, **kw):
    torch.manual_seed(0)
    model = gm.build("neural_ar", d, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_hidden_group_s_sees_only_the_first_s_plus_one_inputs():
    d, H = 7, 3
    model = random_model(d, n_hidden=H)
    hidden = lambda x: torch.tanh(x @ (model.A * model.in_mask).T + model.c)  # noqa: E731
    dep = dependency_matrix(hidden, torch.rand(d, dtype=torch.float64))          # ((d-1)H, d)
    group = torch.arange(d - 1).repeat_interleave(H)
    assert torch.equal(dep, torch.arange(d)[None, :] <= group[:, None])


def test_contains_the_logistic_autoregressive_net():
    """With the hidden path switched off, the direct connections make it an FVSBN."""
    d = 6
    model = random_model(d, n_hidden=2)
    fvsbn = gm.build("fvsbn", d).double()
    with torch.no_grad():
        model.U.zero_()
        fvsbn.W.copy_(model.D)
        fvsbn.b.copy_(model.b)
    x = (torch.rand(30, d, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    torch.testing.assert_close(model.log_prob(x), fvsbn.log_prob(x))


def test_parameter_count():
    d, H = 8, 3
    hidden = (d - 1) * H
    in_w = H * sum(s + 1 for s in range(d - 1))           # group s reads s + 1 inputs
    out_w = H * sum(range(d))                             # output t reads t groups
    expected = in_w + out_w + d * (d - 1) // 2 + hidden + d
    assert gm.build("neural_ar", d, n_hidden=H).n_parameters() == expected
