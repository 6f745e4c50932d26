"""gm.optim's SGD and Adam make the same updates as torch.optim's, bit for bit, and resume."""
from __future__ import annotations

import pytest
import torch

from gm.optim import SGD, Adam


def _run(make, torch_make, steps=7):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, theirs = make(ps), torch_make(qs)
    for k in range(steps):
        g = [torch.randn_like(p) for p in ps]
        for p, q, gi in zip(ps, qs, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        if k == 3:              # a parameter without a gradient is skipped by both
            ps[1].grad = qs[1].grad = None
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
    return ps, ours


@pytest.mark.parametrize("hyper", [dict(lr=0.1), dict(lr=0.05, momentum=0.9),
                                   dict(lr=0.05, momentum=0.5, weight_decay=1e-3)])
def test_sgd_matches_torch(hyper):
    _run(lambda ps: SGD(ps, **hyper), lambda qs: torch.optim.SGD(qs, **hyper))


@pytest.mark.parametrize("hyper", [dict(lr=1e-3), dict(lr=3e-3, betas=(0.5, 0.99)),
                                   dict(lr=1e-2, weight_decay=1e-4, eps=1e-6)])
def test_adam_matches_torch(hyper):
    _run(lambda ps: Adam(ps, **hyper), lambda qs: torch.optim.Adam(qs, **hyper))


def test_groups_and_resume():
    """Per-group hyperparameters, and a state_dict round trip continuing bit-identically."""
    def make(ps):
        return Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5, "weight_decay": 0.1}],
                    lr=0.01)
    ps, opt = _run(make, lambda qs: torch.optim.Adam(
        [{"params": qs[:1]}, {"params": qs[1:], "lr": 0.5, "weight_decay": 0.1}], lr=0.01))
    clone = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = make(clone)
    opt2.load_state_dict(opt.state_dict())
    g = [torch.ones_like(p) for p in ps]
    for a, b, gi in zip(ps, clone, g):
        a.grad, b.grad = gi, gi.clone()
    opt.step()
    opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, clone))
    with pytest.raises(KeyError):
        SGD(ps[:1]).load_state_dict(opt.state_dict())
