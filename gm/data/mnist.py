"""MNIST (LeCun et al. 1998), dynamically binarised, and the split procedure of its layout.

Files: the four gzipped IDX files from http://yann.lecun.com/exdb/mnist/, with the mirrors
torchvision (ossci-datasets S3) and TensorFlow (cvdf-datasets GCS) use; all three serve the
same bytes.  Checksums:
  sha256 of the .gz as served: tensorflow/datasets ``url_checksums/mnist.txt`` (also used with
  the yann.lecun.com and ossci URLs by Guild AI's docs and red-chainer's MNIST loader);
  md5 of the gunzipped IDX files: the widely published values (e.g. secml's MNIST loader);
  torchvision's MNIST.resources lists md5s of the .gz files (f68b3c2d..., d53e105e...,
  9fb629c4..., ec29112d...).  No published sha256 of the uncompressed files was found, so
  the content check uses md5; the served sha256 is always checked on download.

Splits (shared with Fashion-MNIST, see :func:`prepare_mnist_layout`): validation is a seeded
``val_size`` (10k) subset of the official 60k training set, train the other 50k, test the
official 10k; ``max_train``/``max_val``/``max_test`` keep nested seeded subsets.

Binarisation "dynamic" (Salakhutdinov & Murray 2008; Burda et al. 2016): x_train holds the grey
probabilities k/255, which the training loop samples afresh every epoch; x_val and x_test are
sampled ONCE from the same probabilities with a fixed seed, so every model is evaluated on the
same binary images.  Real view: grey levels dequantised with 256 levels, (k + u) / 256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from gm.config import make_config
from gm.data.download import Remote, fetch_files
from gm.data.idx import mnist_layout_names, read_mnist_layout
from gm.data.registry import register_dataset
from gm.data.splits import SPLITS, CarveOptions, Splits, carve_indices, dequantize

URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/")
_SERVED = {   # sha256 of the .gz, tensorflow/datasets url_checksums/mnist.txt
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_CONTENT = {  # md5 of the gunzipped IDX files (widely published, e.g. secml)
    "train-images-idx3-ubyte.gz": "md5:6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "md5:a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "md5:2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "md5:27ae3e4e09519cfbb04c329615203637",
}
REMOTES = tuple(Remote(n, tuple(u + n for u in URLS), _SERVED[n], _CONTENT[n],
                       "tensorflow/datasets url_checksums/mnist.txt; md5 of content: secml")
                for n in mnist_layout_names())
LEVELS = 256


def fetch(raw_dir: Path, *, mirror: str | None = None, retries: int = 4,
          backoff: float = 1.0, **options) -> None:
    """Download and verify the files.  ``options`` are prepare's (the pipeline passes the same
    ``datasets.mnist`` block to both stages): validated here, used by prepare."""
    make_config(CarveOptions, options, "datasets.mnist")
    fetch_files("mnist", REMOTES, raw_dir, mirror=mirror, retries=retries, backoff=backoff)


def prepare_mnist_layout(name: str, raw_dir: Path, seed: int, options: CarveOptions,
                         binarize: Callable[[str, np.ndarray], np.ndarray],
                         binarization: str, *, whole: bool = False) -> Splits:
    """Fixed splits of a dataset in MNIST's four-file layout.

    binarize(split, k) maps the grey levels k, (n, 784) uint8, of one split to its binary view
    (or, for dynamic binarisation of the training split, to probabilities).  ``whole=True``:
    binarize(source, k) is called once on each official file's images instead ("train": all
    60k, "test": all 10k, in file order) and the splits are cut from its result, so an
    image's binary view depends neither on the split nor on the max_* caps (a binarization
    drawn once for the dataset, as Larochelle & Murray 2011 did for MNIST).
    """
    files = read_mnist_layout(raw_dir)
    idx = carve_indices(len(files["train"][0]), len(files["test"][0]), options, seed)
    source = {"train": "train", "val": "train", "test": "test"}
    drawn = ({src: binarize(src, files[src][0].reshape(len(files[src][0]), -1))
              for src in ("train", "test")} if whole else {})
    x, y, r = {}, {}, {}
    for i, s in enumerate(SPLITS):
        images, labels = files[source[s]]
        k = images[idx[s]].reshape(len(idx[s]), -1)
        x[s] = drawn[source[s]][idx[s]] if whole else binarize(s, k)
        y[s] = labels[idx[s]].astype(np.int64)
        r[s] = dequantize(k, LEVELS, [seed, i])
    return Splits(name, x=x, y=y, r=r, image_shape=(28, 28), n_classes=10, levels=LEVELS,
                  binarization=binarization)


def prepare(raw_dir: Path, seed: int = 0, **options) -> Splits:
    """MNIST splits; options are the fields of CarveOptions (val_size, max_train, ...)."""
    opts = make_config(CarveOptions, options, "datasets.mnist")

    def binarize(split: str, k: np.ndarray) -> np.ndarray:
        p = (k / 255.0).astype(np.float32)
        if split == "train":
            return p
        u = np.random.default_rng([seed, SPLITS.index(split), 1]).random(k.shape)
        return (u < p).astype(np.float32)

    return prepare_mnist_layout("mnist", raw_dir, seed, opts, binarize, "dynamic")


register_dataset("mnist", fetch=fetch, prepare=prepare, options=CarveOptions)
