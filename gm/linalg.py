"""Matrix products on the fastest kernel torch has for their shape and device.

On the CPU torch's ``@`` calls MKL's sgemm.  On this project's reference machine (AMD EPYC,
AVX-512, one thread) oneDNN's float32 GEMM, which torch ships for its fused linear layers, is
about twice as fast at the sizes of the models (100x784x500: 0.36 ms against 0.78 ms;
benchmarks/hardware_fraction.py), while for tiny products its fixed cost (~10 us) loses.
So float32 products of at least :data:`ONEDNN_MIN_MACS` multiply-adds on the CPU go to oneDNN,
everything else (float64, CUDA, small) to ``@``.  The choice depends only on shapes, dtype and
device, so a run is reproducible; the two kernels round differently (~1e-7 relative).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

ONEDNN_MIN_MACS = 1 << 20
_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ENABLED = (_linear is not None and torch.backends.mkldnn.is_available()
            and os.environ.get("GM_ONEDNN", "1") != "0")


def _onednn(a: Tensor, b: Tensor) -> bool:
    # the size test first: small products, where this check's own cost shows, stop there
    return (_ENABLED and a.dim() == 2 and a.shape[0] * a.shape[1] * b.shape[1] >= ONEDNN_MIN_MACS
            and a.is_cpu and a.dtype == torch.float32 == b.dtype)


def addmm(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """bias + a @ b for a (m, k), b (k, n), bias (n,) or None -> (m, n)."""
    if _onednn(a, b):
        # oneDNN's linear computes a @ w.T + bias with w (n, k); b.T is that w as a view
        return _linear(a if a.is_contiguous() else a.contiguous(), b.T, bias, "none", [], "")
    return a @ b if bias is None else torch.addmm(bias, a, b)


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, (m, k) x (k, n) -> (m, n)."""
    return addmm(None, a, b)


def moment_difference(x: Tensor, h: Tensor, xn: Tensor, hn: Tensor) -> Tensor:
    """x' h / len(x) - xn' hn / len(xn): the positive minus the negative phase of a Boltzmann
    machine's weight gradient, x (n, D), h (n, H), xn (m, D), hn (m, H) -> (D, H).

    One product over the stacked phases, (D, n + m) x (n + m, H)."""
    n, m = x.shape[0], xn.shape[0]
    if _onednn(x.T, h):
        left = torch.cat([x, xn]).T.contiguous()
        right = torch.cat([h / n, hn / -m]).T.contiguous()
        return _linear(left, right, None, "none", [], "")
    return torch.addmm(x.T @ h, xn.T, hn, beta=1 / n, alpha=-1 / m)
