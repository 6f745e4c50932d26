"""Sums of softplus terms over every state of an enumerated layer, by products (the DBM's log f).

The DBM's exact log f(v) (book section 20.4) enumerates its smaller hidden layer: for example i
and state s it needs sum_j softplus(a_ij + d_sj), with a = v W1 + c1 (n, k) and d = W2 h2_s
(S, k), S = 2^n2 states.  Since softplus(a + d) = log(1 + e^a e^d),

    sum_j softplus(a_ij + d_sj) = sum over groups J of log prod_{j in J} (1 + e^a_ij e^d_sj):

a multiply, an add and a product per term, and one log per group of terms, where
:func:`gm.ops.softplus_sums` spends an exp per term (3.3 ns of the about 4 per term in float64
on the reference machine).  Each factor lies in [1, 1 + e^(a_ij + max_s d_sj)], so groups of g
terms with g * max_ij softplus(a_ij + max_s d_sj) <= 700 keep every product below e^700, under
float64's largest number (e^709.8).  When some |a| or |d| reaches 350, e^a or e^d could leave
the normal float64 range: those inputs go to :func:`gm.ops.softplus_sums` instead.

Rounding: each factor and product rounds by at most 2^-53 relative, so each sum is within about
2 k 2^-53 of exact in absolute terms (k terms), as for the exp form (tests/test_dbm.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gm.ops import softplus_sums

SAFE = 350.0       # |a|, |d| below this: e^a, e^d and e^a e^d are normal float64 numbers
LOG_MAX = 700.0    # a group's product of factors stays below e^700


def softplus_sums_factored(a: Tensor, d: Tensor, block: int = 2**16, chunk: int = 16) -> Tensor:
    """out[i, s] = sum_j softplus(a[i, j] + d[s, j]), (n, S) float64, from a (n, k), d (S, k).

    States go in blocks of ``block // k`` (e^d of a block, 512 KiB, made once and used for
    every example), examples in chunks of ``chunk`` per operation (an (chunk, states, k)
    product of 8 MiB).  Each sum is reduced by one thread in one order, so the values do not
    depend on the number of threads."""
    a, d = a.double(), d.double()
    n, k = a.shape
    S = d.shape[0]
    if n == 0 or S == 0 or not (float(a.abs().max()) < SAFE and float(d.abs().max()) < SAFE):
        return softplus_sums(a, d)
    bound = float(F.softplus(a + d.amax(0)).max())        # the log of any factor is below it
    g = max(1, min(k, int(LOG_MAX // max(bound, 1e-300))))  # terms per group
    whole, rest = divmod(k, g)
    ea = a.exp()[:, None]                                   # (n, 1, k)
    out = torch.empty(n, S, dtype=torch.float64, device=a.device)
    step = max(1, block // k)                               # states per block
    ed = torch.empty(min(step, S), k, dtype=torch.float64, device=a.device)
    z = torch.empty(min(chunk, n), min(step, S), k, dtype=torch.float64, device=a.device)
    for s in range(0, S, step):
        m = min(step, S - s)
        torch.exp(d[s:s + m], out=ed[:m])
        for i in range(0, n, chunk):
            c = min(chunk, n - i)
            zb = z[:c, :m]
            torch.mul(ed[:m], ea[i:i + c], out=zb).add_(1.0)          # 1 + e^a e^d
            o = out[i:i + c, s:s + m]
            groups = zb[..., :whole * g].unflatten(-1, (whole, g))
            torch.sum(torch.prod(groups, -1).log_(), -1, out=o)
            if rest:
                o.add_(torch.prod(zb[..., whole * g:], -1).log_())
    return out
