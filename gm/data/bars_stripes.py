"""Bars and stripes (MacKay 2003): n x n images with every row or every column constant.

There are 2^(n+1) - 2 distinct patterns (all-off and all-on are both bars and stripes), and
the splits draw them uniformly, so the data distribution is uniform on them: a model that
puts uniform mass on them reaches the optimum expected log-likelihood -log(2^(n+1) - 2)
nats per image (no model does better in expectation: it is minus the data's entropy); for
n = 4 that is -log 30 = -3.401, declared on the dataset spec (``optimum_log_likelihood``).
"""
from __future__ import annotations

import math

import numpy as np

from gm.data.registry import no_fetch, register_dataset
from gm.data.splits import Splits

SIDE = 4


def patterns(n: int = SIDE) -> np.ndarray:
    """The distinct bars-and-stripes patterns, (2^(n+1) - 2, n*n) float32."""
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float32)
    rows = np.repeat(bits[:, :, None], n, axis=2)     # each row constant
    cols = rows.transpose(0, 2, 1)                    # each column constant
    allp = np.concatenate([rows, cols]).reshape(-1, n * n)
    return np.unique(allp, axis=0)


def optimum_log_likelihood(n: int = SIDE) -> float:
    """-log(number of patterns): the best average log p(x) of any model on this data."""
    return -math.log(2 ** (n + 1) - 2)


def prepare(raw_dir, seed: int = 0, sizes=(1000, 200, 500)) -> Splits:
    p = patterns()
    rng = np.random.default_rng(seed)
    x = {s: p[rng.integers(0, len(p), n)] for s, n in zip(("train", "val", "test"), sizes)}
    return Splits("bars_stripes", x=x, y={s: np.full(len(v), -1) for s, v in x.items()},
                  image_shape=(SIDE, SIDE), n_classes=0, levels=0)


register_dataset("bars_stripes", fetch=no_fetch, prepare=prepare,
                 optimum_log_likelihood=optimum_log_likelihood())
