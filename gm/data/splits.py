"""Prepared datasets: fixed train/validation/test splits saved as one .npz per dataset.

Arrays (float32, values in [0, 1]):
  x_train, x_val, x_test  the binary view, what binary models see, (n, d) or (n, T, d);
  r_train, r_val, r_test  the real-valued view (dequantised grey levels, Theis et al. 2016),
                          present only when the dataset has grey levels;
  y_train, y_val, y_test  int64 class labels, -1 where a dataset has none.
Metadata: name, image_shape (h, w), n_classes, levels (grey levels of the real view, 0 if
none), binarization ("fixed" or "dynamic": for "dynamic" x_train holds probabilities that the
training loop samples afresh every epoch), and sha256 of the array bytes; ``info`` (only when a
dataset records any): how the arrays were made beyond that, as plain JSON, e.g. the seed and the
sha256 of a stochastic binarization drawn once (gm/data/fashion_mnist.py).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gm.config import require
from gm.errors import DataError
from gm.io import atomic_path, cause, describe

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    name: str
    x: dict[str, np.ndarray]                 # split -> binary view
    y: dict[str, np.ndarray]                 # split -> labels (-1 if none)
    r: dict[str, np.ndarray] = field(default_factory=dict)  # split -> real view (may be empty)
    image_shape: tuple[int, int] = (0, 0)
    n_classes: int = 0
    levels: int = 0
    binarization: str = "fixed"
    info: dict = field(default_factory=dict)   # extra metadata (plain JSON), saved in "meta"

    @property
    def data_dim(self) -> int:
        return int(self.x["train"].shape[-1])

    def view(self, input_kind: str) -> dict[str, np.ndarray]:
        """The arrays a model of ``input_kind`` ("binary", "real", "sequence") trains on."""
        if input_kind == "real":
            if not self.r:
                raise DataError(f"dataset {self.name!r} has no real-valued view; "
                                "use a binary model or a dataset with grey levels")
            return self.r
        return self.x

    def checksum(self) -> str:
        h = hashlib.sha256()
        for part in (self.x, self.r, self.y):
            for k in sorted(part):
                h.update(k.encode())
                h.update(np.ascontiguousarray(part[k]).tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> str:
        """Write atomically to ``path`` (.npz); returns the sha256 of the arrays."""
        arrays = {f"x_{k}": v.astype(np.float32) for k, v in self.x.items()}
        arrays |= {f"r_{k}": v.astype(np.float32) for k, v in self.r.items()}
        arrays |= {f"y_{k}": v.astype(np.int64) for k, v in self.y.items()}
        digest = self.checksum()
        meta = {"name": self.name, "image_shape": list(self.image_shape),
                "n_classes": self.n_classes, "levels": self.levels,
                "binarization": self.binarization, "sha256": digest}
        if self.info:   # only when there is some: other datasets' files stay as they were
            meta["info"] = self.info
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return digest


# what a damaged .npz raises inside numpy and zipfile is open-ended (BadZipFile, zlib.error,
# EOFError, a pickle refused by allow_pickle=False, and for a flipped byte in an array header
# even tokenize.TokenError or SyntaxError): any Exception while reading means "not readable"
_UNREADABLE = (Exception,)


def load_splits(path: Path) -> Splits:
    """Read a prepared dataset and verify it twice: zipfile checks the CRC-32 of every member
    as numpy reads it, then the sha256 of the arrays recorded by prepare
    (:meth:`Splits.checksum`) is recomputed: about 1 GB/s, 0.4 s of a 1.5-2 s load for
    MNIST's 0.42 GiB of binary and real arrays (measured on this project's 2-core CPU box).

    A missing, cut-off or corrupt file raises DataError with one line:
    ``<file>: <problem> (<fix>)``, the fix being to (re)run the prepare stage."""
    path = Path(path)
    prepare = f"python -m pipeline.prepare --dataset {path.stem}"
    if not path.exists():
        raise DataError(describe(path, "missing", f"run the prepare stage: {prepare}"))
    fix = f"delete it and rerun the prepare stage: {prepare}"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            pick = lambda p: {s: z[f"{p}_{s}"].astype(np.float32 if p != "y" else np.int64)  # noqa: E731
                              for s in SPLITS if f"{p}_{s}" in z}
            s = Splits(meta["name"], pick("x"), pick("y"), pick("r"),
                       tuple(meta["image_shape"]), meta["n_classes"], meta["levels"],
                       meta["binarization"], meta.get("info") or {})
            recorded = meta["sha256"]
    except _UNREADABLE as err:
        raise DataError(describe(path, f"not a readable prepared dataset ({cause(err)})",
                                 fix)) from None
    missing = [f"{p}_{k}" for p in ("x", "y") for k in SPLITS if k not in getattr(s, p)]
    if missing:
        raise DataError(describe(path, f"arrays {', '.join(missing)} missing", fix))
    if s.checksum() != recorded:
        raise DataError(describe(path, "checksum mismatch: its arrays are not the ones prepare "
                                 "wrote (corrupt or edited)", fix))
    return s


def data_dim_of(path: Path) -> int | None:
    """The data dimension (last axis of x_train) of a prepared dataset, read from the array
    header only (no decompression of the data); None when the file is missing or unreadable
    (:func:`load_splits` then says why)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("x_train.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape = read(f)[0]
        return int(shape[-1])
    except _UNREADABLE:
        return None


def split_indices(n: int, n_val: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed random partition of range(n) into train/val/test index arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def dequantize(k: np.ndarray, levels: int, seed: int | list[int]) -> np.ndarray:
    """Grey levels k in {0..levels-1} -> (k + u) / levels with u ~ U(0, 1), fixed seed.

    A density on [0, 1]^d of the dequantised data lower-bounds the discrete log-likelihood
    of the grey levels plus d log(levels) (Theis et al. 2016, sec. 3.1).
    """
    u = np.random.default_rng(seed).random(k.shape)
    below_one = np.nextafter(np.float32(1), np.float32(0))   # float32 rounding may reach 1.0
    return np.minimum(((k + u) / levels).astype(np.float32), below_one)


@dataclass(frozen=True)
class SubsetOptions:
    """Prepare options of a dataset with official splits: caps on the size of each split.

    max_train, max_val, max_test: keep at most this many examples of that split (None: all).
    The kept ones are the first of a fixed seeded order, so smaller subsets nest in larger
    ones and the validation/test examples of a subset are always held out.
    """

    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None

    def __post_init__(self):
        for s in SPLITS:
            cap = getattr(self, f"max_{s}")
            require(cap is None or cap >= 1, f"max_{s}", f"must be >= 1 or null, got {cap}")

    def cap(self, split: str) -> int | None:
        return getattr(self, f"max_{split}")


@dataclass(frozen=True)
class CarveOptions(SubsetOptions):
    """SubsetOptions plus val_size: how many official training examples become validation."""

    val_size: int = 10000

    def __post_init__(self):
        super().__post_init__()
        require(self.val_size >= 1, "val_size", f"must be >= 1, got {self.val_size}")


def limit_indices(orders: dict[str, np.ndarray], limits: SubsetOptions) -> dict[str, np.ndarray]:
    """Keep the first ``limits.cap(split)`` indices of each seeded order; sorted index arrays."""
    return {s: np.sort(o[:limits.cap(s)]) for s, o in orders.items()}


def carve_indices(n_train: int, n_test: int, options: CarveOptions,
                  seed: int) -> dict[str, np.ndarray]:
    """Fixed splits of an official (train, test) pair such as MNIST's 60k/10k.

    val is a seeded random ``options.val_size`` subset of the official training set, train the
    rest of it (both index the official training arrays); test indexes the official test set.
    Each split is then capped by ``options`` (see :class:`SubsetOptions`).
    """
    if options.val_size >= n_train:
        raise DataError(f"val_size {options.val_size} leaves no training examples out of "
                        f"{n_train}; choose a smaller datasets.<name>.val_size")
    rng = np.random.default_rng(seed)
    perm, test_order = rng.permutation(n_train), rng.permutation(n_test)
    orders = {"train": perm[options.val_size:], "val": perm[:options.val_size],
              "test": test_order}
    return limit_indices(orders, options)
