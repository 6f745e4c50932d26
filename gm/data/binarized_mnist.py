"""Binarised MNIST of Larochelle & Murray (2011): the fixed 50k/10k/10k split of NADE's paper.

Salakhutdinov & Murray (2008) sampled each MNIST pixel once as a Bernoulli of its grey level;
Larochelle & Murray (2011) published the result as three text files, one image per line
(784 values 0/1 separated by spaces), from Hugo Larochelle's site.  This is the standard
"static" binarised MNIST on which NADE, DBN/DBM (AIS), IWAE... report test log-likelihoods.
No labels and no grey levels (so no real view).

Checksums: sha256 and sizes of the three files from tensorflow/datasets
``url_checksums/binarized_mnist.txt``; the sizes (50000 x 1568 = 78,400,000 bytes etc.) match
the layout "0 1 0 ...\\n".  ``max_train``/``max_val``/``max_test`` keep nested seeded subsets.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from gm.config import make_config
from gm.data.download import Remote, fetch_files
from gm.data.registry import register_dataset
from gm.data.splits import SPLITS, Splits, SubsetOptions, limit_indices
from gm.errors import DataError

URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_FILES = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
          "test": "binarized_mnist_test.amat"}
_SHA256 = {   # tensorflow/datasets url_checksums/binarized_mnist.txt
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
REMOTES = tuple(Remote(n, (URL + n,), _SHA256[n], None,
                       "tensorflow/datasets url_checksums/binarized_mnist.txt")
                for n in _FILES.values())
PIXELS = 28 * 28


def fetch(raw_dir: Path, *, mirror: str | None = None, retries: int = 4,
          backoff: float = 1.0, **options) -> None:
    """Download and verify the files.  ``options`` are prepare's (the pipeline passes the same
    ``datasets.binarized_mnist`` block to both stages): validated here, used by prepare."""
    make_config(SubsetOptions, options, "datasets.binarized_mnist")
    fetch_files("binarized_mnist", REMOTES, raw_dir, mirror=mirror, retries=retries,
                backoff=backoff)


def read_amat(path: Path, width: int = PIXELS) -> np.ndarray:
    """A text matrix of 0/1 values, one row per line -> (n, width) uint8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the fetch stage "
                        "(python -m pipeline.fetch --dataset binarized_mnist) first")
    text = path.read_bytes().decode("ascii", errors="replace").strip()
    rows = text.count("\n") + 1 if text else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # reported below as a size error
        values = np.fromstring(text, dtype=np.uint8, sep=" ")
    if values.size != rows * width or values.max(initial=0) > 1:
        raise DataError(f"{path} is not a matrix of {width} binary values per line "
                        "(truncated or corrupt); delete it and rerun the fetch stage")
    return values.reshape(rows, width)


def prepare(raw_dir: Path, seed: int = 0, **options) -> Splits:
    """The fixed split; options are the fields of SubsetOptions (max_train, ...)."""
    opts = make_config(SubsetOptions, options, "datasets.binarized_mnist")
    full = {s: read_amat(Path(raw_dir) / _FILES[s]) for s in SPLITS}
    rng = np.random.default_rng(seed)
    idx = limit_indices({s: rng.permutation(len(full[s])) for s in SPLITS}, opts)
    x = {s: full[s][idx[s]].astype(np.float32) for s in SPLITS}
    return Splits("binarized_mnist", x=x, y={s: np.full(len(v), -1) for s, v in x.items()},
                  image_shape=(28, 28), n_classes=0, levels=0)


register_dataset("binarized_mnist", fetch=fetch, prepare=prepare, options=SubsetOptions)
