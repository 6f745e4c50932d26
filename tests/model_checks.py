"""Checks every directed generator model must pass (shared by test_sbn/vae/gan/gmmn)."""
import copy

import torch

import gm


def run_steps(model, x, gen, steps):
    for _ in range(steps):
        model.fit_step(x, generator=gen)
        model.end_epoch(0)


def assert_resumes_exactly(name: str, x: torch.Tensor, steps: int = 2, **hparams) -> None:
    """Train ``steps``, checkpoint (state_dict + optimisers + generator), train one more step in
    the original and in a rebuilt copy (built after scrambling the global RNG): same tensors."""
    torch.manual_seed(0)
    a = gm.build(name, x.shape[1], **hparams)
    gen = torch.Generator().manual_seed(1)
    run_steps(a, x, gen, steps)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    opts = copy.deepcopy({k: o.state_dict() for k, o in a.optimizers().items()})  # as if saved
    gstate = gen.get_state()
    torch.manual_seed(123)
    b = gm.build(name, x.shape[1], **hparams)
    b.load_state_dict(state)
    for k, o in b.optimizers().items():
        o.load_state_dict(opts[k])
    gen_b = torch.Generator().manual_seed(999)
    gen_b.set_state(gstate)
    run_steps(a, x, gen, 1)
    run_steps(b, x, gen_b, 1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, equal_nan=True,
                                   msg=f"{name}: {k} differs after resuming")
    assert torch.equal(a.sample(5, generator=torch.Generator().manual_seed(3)),
                       b.sample(5, generator=torch.Generator().manual_seed(3)))
