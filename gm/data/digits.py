"""scikit-learn's 8x8 handwritten digits (1797 images, grey levels 0..16), shipped in its wheel.

Binary view: pixel >= 8 (i.e. grey level / 16 >= 0.5).  Real view: dequantised levels / 17.
Splits: 1257 train, 180 validation, 360 test, a fixed permutation (seed 0).
"""
from __future__ import annotations

import numpy as np

from gm.data.registry import no_fetch, register_dataset
from gm.data.splits import Splits, dequantize, split_indices


def prepare(raw_dir, seed: int = 0) -> Splits:
    from sklearn.datasets import load_digits
    d = load_digits()
    k = d.data.astype(np.int64)                       # (1797, 64) in 0..16
    idx = split_indices(len(k), n_val=180, n_test=360, seed=seed)
    real = dequantize(k, 17, seed)
    return Splits("digits",
                  x={s: (k[i] >= 8).astype(np.float32) for s, i in idx.items()},
                  y={s: d.target[i].astype(np.int64) for s, i in idx.items()},
                  r={s: real[i] for s, i in idx.items()},
                  image_shape=(8, 8), n_classes=10, levels=17)


register_dataset("digits", fetch=no_fetch, prepare=prepare)
