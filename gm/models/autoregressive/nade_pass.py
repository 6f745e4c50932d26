"""NADE's d conditionals in one pass, with a hand-written backward pass (book 20.10.10).

a_t = c + sum_{s<t} W[:, s] xo_s,  h_t = sigmoid(a_t),  logit_t = b_t + V_t . h_t.

Positions go in blocks of ``BLOCK``.  Inside a block the prefix sums are one matrix product with
the strictly lower-triangular mask, (B, n, B) @ (B, H): B^2 n H multiply-adds that run at the
machine's matmul rate, where a cumulative sum over the (d, n, H) tensor (and its flipped
backward) is bound by memory traffic.  Between blocks a running (n, H) sum carries the earlier
positions.  Training keeps only h (d, n, H) for the backward pass; without gradients only one
block's (B, n, H) is held.
"""
from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 16   # positions per block (benchmarks/nade_pass.py: 16 fastest of 8-128 at d = 64 and 784)


def _blocks(d: int) -> list[tuple[int, int]]:
    return [(k, min(k + BLOCK, d)) for k in range(0, d, BLOCK)]


def _strictly_lower(xb: Tensor) -> Tensor:
    """A[t, i, s] = xb[i, s] if s < t else 0, for xb (n, B) -> (B, n, B)."""
    B = xb.shape[1]
    mask = torch.ones(B, B, dtype=xb.dtype, device=xb.device).tril_(-1)
    return mask.unsqueeze(1) * xb.unsqueeze(0)


class NADELogits(torch.autograd.Function):
    """(xo (n, d), W (H, d), c (H,), V (d, H), b (d,)) -> logits (n, d) of p(xo_t = 1 | xo_<t)."""

    @staticmethod
    def forward(ctx, xo: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> Tensor:
        n, d = xo.shape
        H = W.shape[0]
        keep = any(ctx.needs_input_grad)
        h = xo.new_empty(d, n, H) if keep else None
        logits = xo.new_empty(d, n)
        run = c.expand(n, H)                         # c + the positions of earlier blocks
        for k0, k1 in _blocks(d):
            xb, Wb = xo[:, k0:k1], W[:, k0:k1]
            hb = torch.matmul(_strictly_lower(xb), Wb.T, out=h[k0:k1] if keep else None)
            hb.add_(run).sigmoid_()                  # (B, n, H)
            torch.baddbmm(b[k0:k1, None, None], hb, V[k0:k1, :, None],
                          out=logits[k0:k1].unsqueeze(2))
            run = torch.addmm(run, xb, Wb.T)
        if keep:
            ctx.save_for_backward(xo, W, V, h)
        return logits.T

    @staticmethod
    def backward(ctx, grad: Tensor):
        xo, W, V, h = ctx.saved_tensors
        n, d = xo.shape
        H = W.shape[0]
        gT = grad.T.contiguous()                     # (d, n)
        grad_b = gT.sum(1)
        grad_V = torch.bmm(gT.unsqueeze(1), h).squeeze(1)
        ga = torch.addcmul(h, h, h, value=-1)        # h (1 - h), then dL/da (d, n, H)
        ga.mul_(gT.unsqueeze(2)).mul_(V.unsqueeze(1))
        grad_c = ga.sum((0, 1))
        grad_W = torch.empty_like(W)
        grad_xo = torch.empty_like(xo) if ctx.needs_input_grad[0] else None
        later = xo.new_zeros(n, H)                   # dL/da summed over later blocks' positions
        for k0, k1 in reversed(_blocks(d)):
            xb, Wb, gb = xo[:, k0:k1], W[:, k0:k1], ga[k0:k1]
            A = _strictly_lower(xb)
            grad_W[:, k0:k1] = torch.addmm(later.T @ xb, gb.reshape(-1, H).T,
                                           A.reshape(-1, k1 - k0))
            if grad_xo is not None:
                inner = torch.matmul(gb, Wb) * _strictly_lower(torch.ones_like(xb))
                grad_xo[:, k0:k1] = inner.sum(0) + later @ Wb
            later = later + gb.sum(0)
        return grad_xo, grad_W, grad_c, grad_V, grad_b
