"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

A big-endian header: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions k, then k uint32 sizes; the data follow in C order.  Files may be gzipped.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from gm.errors import DataError

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally .gz) into a uint8 array of its shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the fetch stage "
                        "(python -m pipeline.fetch --dataset <name>) first")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _UBYTE:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "delete it and rerun the fetch stage")
    k = data[3]
    shape = struct.unpack(f">{k}I", data[4:4 + 4 * k])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * k)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {body.size} values "
                        "(truncated file?); delete it and rerun the fetch stage")
    return body.reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in .gz)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, _UBYTE, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def read_mnist_layout(raw_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files of the MNIST layout -> {"train": (images, labels), "test": (...)}.

    images are (n, 28, 28) uint8 grey levels 0..255, labels (n,) uint8.
    """
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(Path(raw_dir) / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(Path(raw_dir) / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DataError(f"{raw_dir}: {len(images)} {split} images but {len(labels)} labels")
        out[split] = (images, labels)
    return out


def mnist_layout_names() -> tuple[str, ...]:
    """File names of the MNIST layout, as served and as kept in raw_dir."""
    return tuple(f"{p}-{kind}-ubyte.gz" for p in ("train", "t10k")
                 for kind in ("images-idx3", "labels-idx1"))
