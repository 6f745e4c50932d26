"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28x28 grey images of 10 kinds of clothing.

Sources, in order: the files of the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist, ``apt-get install dataset-fashion-mnist``), else zalando's
canonical URLs.  Debian re-gzipped the files, so its .gz bytes differ from zalando's; both
decompress to the same IDX bytes, which is what is verified for a local copy.
Checksums:
  content sha256 (of the gunzipped IDX files): computed here from the Debian package
  0.0~git20200523.55506a9-1; their md5s equal the independently published md5s of the
  uncompressed upstream files (f4a8712d..., 9018921c..., 8181f547..., 15d48437...);
  served sha256 of zalando's .gz: tensorflow/datasets ``url_checksums/fashion_mnist.txt``
  (torchvision's FashionMNIST lists their md5s: 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).

Splits as MNIST (:func:`gm.data.mnist.prepare_mnist_layout`): a seeded 10k validation set
carved from the 60k training set, the official 10k test set, optional nested subsets.
Binary view, option ``binarization`` (both fixed: the training loop never resamples them):
  "threshold" (default): grey / 255 >= 0.5;
  "stochastic": each pixel ~ Bernoulli(grey / 255), drawn ONCE for the whole dataset (all 60k
  training and 10k test images, before the splits are cut, so subsets nest) from the recorded
  ``binarization_seed``, as Salakhutdinov & Murray (2008) / Larochelle & Murray (2011) did for
  MNIST.  The prepared file's metadata (``Splits.info["binarization"]``) records the rule, the
  seed, the sha256 of the drawn arrays of the whole dataset (uint8 0/1, the training file's
  images then the test file's, in file order: independent of val_size and the max_* caps) and
  the sha256 of this file's binary splits.
Real view: dequantised with 256 levels.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from gm.config import make_config, require
from gm.data.download import Remote, fetch_files
from gm.data.idx import mnist_layout_names
from gm.data.mnist import prepare_mnist_layout
from gm.data.registry import register_dataset
from gm.data.splits import SPLITS, CarveOptions, Splits

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SERVED = {   # sha256 of zalando's .gz, tensorflow/datasets url_checksums/fashion_mnist.txt
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_CONTENT = {  # sha256 of the gunzipped IDX files (measured on the Debian package's files)
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
REMOTES = tuple(Remote(n, (URL + n,), _SERVED[n], "sha256:" + _CONTENT[n],
                       "tensorflow/datasets url_checksums/fashion_mnist.txt; content: "
                       "Debian dataset-fashion-mnist")
                for n in mnist_layout_names())
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class FashionOptions(CarveOptions):
    """CarveOptions plus the binarization of the binary view (see the module docstring).

    binarization: "threshold" (grey / 255 >= 0.5) or "stochastic" (Bernoulli(grey / 255),
    drawn once); binarization_seed: the seed of the stochastic draw, required with it (and
    refused without it: a threshold draws nothing).
    """

    binarization: Literal["threshold", "stochastic"] = "threshold"
    binarization_seed: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.binarization == "stochastic":
            require(self.binarization_seed is not None and self.binarization_seed >= 0,
                    "binarization_seed", "must be a non-negative integer with binarization: "
                    f"stochastic (the recorded seed of the draw), got {self.binarization_seed}")
        else:
            require(self.binarization_seed is None, "binarization_seed",
                    "only with binarization: stochastic (a threshold draws nothing); remove it")


def fetch(raw_dir: Path, *, local_dir: Path | None = DEBIAN_DIR, mirror: str | None = None,
          retries: int = 4, backoff: float = 1.0, **options) -> None:
    """Copy the verified Debian files if installed, else download.  ``options`` are prepare's
    (the pipeline passes the same ``datasets.fashion_mnist`` block to both stages)."""
    make_config(FashionOptions, options, "datasets.fashion_mnist")
    fetch_files("fashion_mnist", REMOTES, raw_dir, local_dirs=(Path(local_dir),) if local_dir
                else (), mirror=mirror, retries=retries, backoff=backoff)


SOURCES = ("train", "test")   # the official files, in the order they are drawn and hashed


def stochastic_binarization(k: np.ndarray, seed: int, source: str) -> np.ndarray:
    """x ~ Bernoulli(k / 255) per pixel of grey levels k (n, d) uint8, as uint8 0/1.

    u is uniform on the integers 0..254 and x = [u < k], so P(x = 1) = k / 255 exactly
    (0 stays 0, 255 stays 1); one stream per official file, seeded by (seed, file)."""
    u = np.random.default_rng([seed, SOURCES.index(source)]).integers(
        0, 255, size=k.shape, dtype=np.uint8)
    return (u < k).astype(np.uint8)


def sha256_of(arrays) -> str:
    """sha256 of the bytes of ``arrays``, in order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def prepare(raw_dir: Path, seed: int = 0, **options) -> Splits:
    """Fashion-MNIST splits; options are the fields of FashionOptions (val_size, max_train,
    ..., binarization, binarization_seed)."""
    opts = make_config(FashionOptions, options, "datasets.fashion_mnist")
    if opts.binarization == "threshold":
        return prepare_mnist_layout("fashion_mnist", raw_dir, seed, opts,
                                    lambda _, k: (k >= 128).astype(np.float32),  # k/255 >= 0.5
                                    "fixed")
    drawn: dict[str, np.ndarray] = {}

    def draw(source: str, k: np.ndarray) -> np.ndarray:   # once per official file
        drawn[source] = stochastic_binarization(k, opts.binarization_seed, source)
        return drawn[source].astype(np.float32)

    splits = prepare_mnist_layout("fashion_mnist", raw_dir, seed, opts, draw, "fixed",
                                  whole=True)
    splits.info = {"binarization": {
        "method": "stochastic",
        "rule": "each pixel ~ Bernoulli(grey / 255), drawn once for the whole dataset",
        "seed": opts.binarization_seed,
        "sha256": sha256_of(drawn[s] for s in SOURCES),
        "sha256_of": "uint8 0/1 draws of all " + " + ".join(
            f"{len(drawn[s]):,} {s}" for s in SOURCES) + " images, in file order",
        "splits_sha256": sha256_of(splits.x[s] for s in SPLITS)}}
    return splits


register_dataset("fashion_mnist", fetch=fetch, prepare=prepare, options=FashionOptions)
