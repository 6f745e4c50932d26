"""scikit-learn's 8x8 handwritten digits (1797 images, grey levels 0..16), shipped in its wheel.

Binary view: pixel >= 8 (i.e. grey level / 16 >= 0.5).  Real view: dequantised levels / 17.
Splits: 1257 train, 180 validation, 360 test, a fixed permutation (seed 0).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from gm.data.registry import no_fetch, register_dataset
from gm.data.splits import Splits, dequantize, split_indices
from gm.io import InputError


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(levels (1797, 64) int64 in 0..16, labels (1797,) int64): the file that
    ``sklearn.datasets.load_digits`` reads, read as it reads it, without importing
    scikit-learn (a second of CPU)."""
    spec = importlib.util.find_spec("sklearn")   # locates the package, does not import it
    if spec is None or spec.origin is None:
        raise InputError("sklearn/datasets/data/digits.csv.gz", "scikit-learn is not installed",
                         "the digits ship in its wheel: pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")       # (1797, 65): 64 levels, then the label
    return data[:, :-1].astype(np.int64), data[:, -1].astype(np.int64)


def prepare(raw_dir, seed: int = 0) -> Splits:
    k, labels = _load_digits()                         # (1797, 64) in 0..16
    idx = split_indices(len(k), n_val=180, n_test=360, seed=seed)
    real = dequantize(k, 17, seed)
    return Splits("digits",
                  x={s: (k[i] >= 8).astype(np.float32) for s, i in idx.items()},
                  y={s: labels[i] for s, i in idx.items()},
                  r={s: real[i] for s, i in idx.items()},
                  image_shape=(8, 8), n_classes=10, levels=17)


register_dataset("digits", fetch=no_fetch, prepare=prepare)
