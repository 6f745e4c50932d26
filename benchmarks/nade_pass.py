"""NADE training step: the blocked one-pass kernel (gm/models/autoregressive/nade_pass.py) vs
the cumulative-sum formulation it replaced, and the block size (8-128), timed alternately in
one process.

One step = logits of all d conditionals, binary cross-entropy, backward, on a fixed binary
minibatch; the same parameters for both.  The cumulative-sum side is the former
``NADE.hidden_preactivations`` (an exclusive cumsum over the (d, n, H) contributions, autograd
backward).  Sizes: digits (d 64, the tuned H 73, batch 100) and Fashion-MNIST (d 784, H 500,
batch 100, as configs/fashion.yaml).

    python benchmarks/nade_pass.py [--device cuda] [--reps 5]
"""
from __future__ import annotations

import common  # noqa: F401  (sets the thread env vars before numpy/torch load)
from common import digits_binary, fashion_binary, interleaved, parse, report

import torch
import torch.nn.functional as F

from gm.models.autoregressive import nade_pass


def cumsum_logits(xo, W, c, V, b):
    """The replaced formulation: a (d, n, H) exclusive cumulative sum, autograd backward."""
    contrib = xo.T.unsqueeze(2) * W.T.unsqueeze(1)
    csum = contrib.cumsum(0)
    a = torch.cat([torch.zeros_like(csum[:1]), csum[:-1]], 0) + c
    return torch.baddbmm(b[:, None, None], torch.sigmoid(a), V.unsqueeze(2)).squeeze(2).T


def compare(name: str, x, H: int, args, steps: int) -> list[tuple]:
    xo = torch.as_tensor(x[:100], device=args.device)
    d = xo.shape[1]
    g = torch.Generator().manual_seed(0)
    W, V = ((torch.rand(*s, generator=g) - 0.5).div(s[1] ** 0.5).to(args.device)
            for s in ((H, d), (d, H)))
    params = [p.requires_grad_(True) for p in (W, torch.zeros(H, device=args.device), V,
                                               torch.zeros(d, device=args.device))]

    def step(fn, block=None):
        def run():
            if block:
                nade_pass.BLOCK = block
            for _ in range(steps):
                F.binary_cross_entropy_with_logits(fn(xo, *params), xo).backward()
        return run

    default = nade_pass.BLOCK
    sides = {"cumsum": step(cumsum_logits)}
    sides |= {f"block {B}": step(nade_pass.NADELogits.apply, B) for B in (8, 16, 32, 64, 128)}
    t = interleaved(sides, args.reps, args.device)
    nade_pass.BLOCK = default
    rows = [(f"{name}: {k} ms/step", 1e3 * v / steps, "") for k, v in t.items()]
    rows.append((f"{name}: speed ratio cumsum / block {default}",
                 t["cumsum"] / t[f"block {default}"], "the default block"))
    return rows


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    rows = compare("digits d 64, H 73, batch 100", digits_binary(), 73, args, steps=50)
    rows += compare("fashion_mnist d 784, H 500, batch 100", fashion_binary(100), 500, args,
                    steps=1)
    report(f"NADE training step, device {args.device}, {args.threads} thread(s), "
           f"median of {args.reps}", rows)


if __name__ == "__main__":
    main()
