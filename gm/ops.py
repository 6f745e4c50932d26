"""Small tensor operations shared by many models."""
from __future__ import annotations

import math

import torch
from torch import Tensor


class Uniforms:
    """Every U(0, 1) draw of a repeated computation (e.g. one CD update) made by one call.

    Pass it to :func:`bernoulli` in place of the generator.  The first :meth:`start` records
    the shapes the computation asks for, drawing each on its own; later ones fill one buffer
    with a single call and hand out views of it in the same order (a view is overwritten by
    the next :meth:`start`, so samples that must outlive the computation go to ``out``).
    torch's CPU generator fills a tensor element by element, so on the CPU the values equal
    those of the separate draws; on CUDA they differ (each call has its own Philox offset).
    """

    def __init__(self):
        self.shapes: list[torch.Size] = []
        self.views: list[Tensor] | None = None
        self.flat: Tensor | None = None
        self.generator: torch.Generator | None = None
        self.i = 0

    def start(self, generator: torch.Generator) -> Uniforms:
        """Begin one run of the computation, drawing from ``generator``."""
        self.generator, self.i = generator, 0
        if self.views is None and self.shapes:             # recorded: allocate the buffer
            sizes = [math.prod(s) for s in self.shapes]
            self.flat = torch.empty(sum(sizes), dtype=self.dtype, device=self.device)
            self.views = [u.view(s) for u, s in zip(self.flat.split(sizes), self.shapes)]
        if self.views is not None:
            self.flat.uniform_(generator=generator)
        return self

    def rand(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The next draw, shape ``shape``."""
        if self.views is None:                               # recording
            self.shapes.append(shape)
            self.dtype, self.device = dtype, device
            return torch.rand(shape, generator=self.generator, dtype=dtype, device=device)
        u, self.i = self.views[self.i], self.i + 1
        if u.shape != shape or u.dtype != dtype:
            raise RuntimeError(f"Uniforms: draw {self.i} is {tuple(shape)} {dtype}, recorded "
                               f"{tuple(u.shape)} {u.dtype}")
        return u


def bernoulli(p: Tensor, generator: torch.Generator | Uniforms, *,
              out: Tensor | None = None) -> Tensor:
    """Binary sample 1[u < p], u ~ U(0, 1), same shape and dtype as p (written into ``out``
    when given)."""
    if isinstance(generator, Uniforms):
        u = generator.rand(p.shape, p.dtype, p.device)
    else:
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return u.lt_(p) if out is None else torch.lt(u, p, out=out)


def softplus_sums(a: Tensor, d: Tensor, block: int = 2**16) -> Tensor:
    """out[i, s] = sum_j softplus(a[i, j] + d[s, j]), (n, S), from a (n, k) and d (S, k).

    Each sum is taken as sum_j max(z_j, 0) + log prod_j (1 + exp(-|z_j|)) with z = a[i] + d[s]:
    one exp and a product per term instead of softplus's exp and log1p (0.70 of the time per
    term in float64; benchmarks/dbm_log_f.py), and exact where torch's softplus is not (it
    returns z itself above z = 20, off by up to 2e-9).  The product of k factors in (1, 2]
    cannot overflow below k = 1023.  Computed in blocks of at most ``block`` elements (512 KiB
    of float64, two buffers of them: a 1 MiB L2 cache; 0.9 of the time of 256 KiB blocks, which
    pay twice the per-call dispatch): one pass over each block per operation instead of passes
    over an (n, S, k) tensor in memory.  Each sum is reduced by one thread in one order, so the
    values do not depend on the number of threads (tests/test_dbm.py).
    """
    n, k = a.shape
    if k > 1023:
        raise ValueError(f"softplus_sums: {k} terms per sum; at most 1023 (float64 product)")
    S = d.shape[0]
    step = max(1, block // k)                  # states per block
    out = torch.empty(n, S, dtype=torch.promote_types(a.dtype, d.dtype), device=a.device)
    buf = torch.empty(min(step, S), k, dtype=out.dtype, device=a.device)
    pos = torch.empty_like(buf)
    logs = torch.empty(min(step, S), dtype=out.dtype, device=a.device)
    for i in range(n):
        for s in range(0, S, step):
            z, relu, part = buf[:min(step, S - s)], pos[:min(step, S - s)], logs[:min(step, S - s)]
            torch.add(a[i], d[s:s + step], out=z)
            torch.clamp(z, min=0, out=relu)
            z.abs_().neg_().exp_().add_(1.0)
            torch.prod(z, -1, out=part)
            torch.sum(relu, -1, out=out[i, s:s + step]).add_(part.log_())
    return out
