"""A small classifier of a dataset's labels, trained from scratch, whose penultimate layer is
the embedding of the feature-space sample metrics (FID, KID, precision/recall, IS).

It stands in for Inception-v3 (Heusel et al. 2017; Salimans et al. 2016), which knows nothing
of 8x8 digits: an MLP by default (on digits as accurate as a small CNN and 5x faster), or a
small CNN for square images (``arch: cnn``, e.g. for MNIST).  It trains on the union of
the dataset's views (binary and dequantised grey levels), so samples of binary and of
real-valued models are embedded by one network.  Checkpoints are {"config", "state_dict"}
(plain dicts and tensors, loadable with weights_only=True).
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.optim import Adam
from gm.config import make_config, require
from gm.errors import CheckpointError
from gm.io import atomic_path


@dataclass(frozen=True)
class ClassifierConfig:
    arch: Literal["mlp", "cnn"] = "mlp"            # cnn needs square images (e.g. MNIST)
    channels: tuple[int, ...] = (16, 32)           # cnn: conv widths (3x3; the last has stride 2)
    hidden: int = 128                              # mlp: first hidden layer
    features: int = 64                             # penultimate width: the embedding
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4

    def __post_init__(self):
        require(len(self.channels) >= 1 and min(self.channels) >= 1, "channels",
                f"must be a non-empty list of positive widths, got {self.channels}")
        require(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        require(self.features >= 2, "features", f"must be >= 2, got {self.features}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


class Classifier(nn.Module):
    """x (n, data_dim) in [0, 1] -> features (n, config.features) -> logits (n, n_classes).

    Calling the module returns logits (the ``classifier`` that ``GenerativeModel.extras``
    receives).
    """

    def __init__(self, data_dim: int, n_classes: int, image_shape: tuple[int, int] | None,
                 config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        require(n_classes >= 2, "n_classes", f"must be >= 2, got {n_classes}")
        self.data_dim, self.n_classes, self.config = data_dim, n_classes, config
        self.image_shape = tuple(image_shape) if image_shape else None
        square = (self.image_shape is not None and self.image_shape[0] == self.image_shape[1]
                  and self.image_shape[0] * self.image_shape[1] == data_dim)
        require(config.arch == "mlp" or square, "arch",
                f"cnn needs square images of data_dim pixels, got {image_shape}")
        self.arch = config.arch
        if self.arch == "cnn":
            layers, c_in = [], 1
            for i, c in enumerate(config.channels):
                stride = 2 if i == len(config.channels) - 1 else 1
                layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.ReLU()]
                c_in = c
            layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                       nn.Linear(16 * c_in, config.features), nn.ReLU()]
        else:
            layers = [nn.Linear(data_dim, config.hidden), nn.ReLU(),
                      nn.Linear(config.hidden, config.features), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.features, n_classes)

    def reset(self, generator: torch.Generator) -> None:
        """PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``generator``."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                with torch.no_grad():
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)

    def _inputs(self, x: Tensor) -> Tensor:
        x = x.to(self.head.weight) - 0.5
        return x.reshape(-1, 1, *self.image_shape) if self.arch == "cnn" else x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (n, config.features) of x (n, data_dim)."""
        return self.body(self._inputs(x))

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (n, n_classes) of x (n, data_dim)."""
        return self.head(self.features(x))

    forward = logits

    @torch.no_grad()
    def embed(self, x, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
        """(features (n, k), class probabilities (n, n_classes)) in eval mode, float64 CPU."""
        self.eval()
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        feats = [self.features(c.to(self.head.weight.device)) for c in x.split(batch_size)]
        f = torch.cat(feats)
        return f.double().cpu(), torch.softmax(self.head(f).double(), dim=1).cpu()

    @torch.no_grad()
    def accuracy(self, x, y) -> float:
        """Fraction of rows of x (n, data_dim) whose argmax logit equals label y (n,)."""
        _, p = self.embed(x)
        return float((p.argmax(1) == torch.as_tensor(np.asarray(y))).double().mean())

    # --- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> dict:
        cfg = {k: list(v) if isinstance(v, tuple) else v
               for k, v in dataclasses.asdict(self.config).items()}
        return {"config": {"data_dim": self.data_dim, "n_classes": self.n_classes,
                           "image_shape": list(self.image_shape) if self.image_shape else None,
                           "classifier": cfg},
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically to ``path``."""
        with atomic_path(Path(path)) as tmp:
            torch.save(self.checkpoint(), tmp)

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> "Classifier":
        try:
            ck = torch.load(Path(path), map_location=map_location, weights_only=True)
            c = ck["config"]
            clf = cls(c["data_dim"], c["n_classes"], c["image_shape"],
                      make_config(ClassifierConfig, c["classifier"], "classifier"))
            clf.load_state_dict(ck["state_dict"])
        except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, KeyError, TypeError,
                ValueError) as err:
            raise CheckpointError(f"{path} is not a gm-bench classifier checkpoint ({err}); "
                                  "delete it and rerun the classifier stage") from None
        return clf.to(map_location).eval()


def train_classifier(x, y, *, n_classes: int, image_shape: tuple[int, int] | None,
                     generator: torch.Generator,
                     config: ClassifierConfig = ClassifierConfig()) -> Classifier:
    """Fit a :class:`Classifier` to x (n, d) in [0, 1], labels y (n,) by Adam on cross-entropy.

    All randomness (init, minibatch order) comes from ``generator`` (a CPU generator).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need x (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, "
                         f"got {int(y.min())}..{int(y.max())}")
    clf = Classifier(x.shape[1], n_classes, image_shape, config)
    clf.reset(generator)
    opt = Adam(clf.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    clf.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(x), generator=generator).split(config.batch_size):
            loss = F.cross_entropy(clf.logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


def fit_dataset_classifier(splits, *, generator: torch.Generator,
                           config: ClassifierConfig = ClassifierConfig()
                           ) -> tuple[Classifier | None, dict[str, float]]:
    """Train the classifier of a prepared dataset (:class:`gm.data.Splits`) on every view of its
    training split; returns (classifier, {"test_accuracy_<view>", "train_seconds"}), or
    (None, {}) when the dataset has no labels (e.g. bars_stripes)."""
    if splits.n_classes < 2 or (splits.y["train"] < 0).any():
        return None, {}
    views = {"binary": splits.x} | ({"real": splits.r} if splits.r else {})
    x = np.concatenate([v["train"].reshape(len(v["train"]), -1) for v in views.values()])
    y = np.concatenate([splits.y["train"]] * len(views))
    t0 = time.perf_counter()
    clf = train_classifier(x, y, n_classes=splits.n_classes, image_shape=splits.image_shape,
                           generator=generator, config=config)
    info = {"train_seconds": time.perf_counter() - t0}
    for name, v in views.items():
        info[f"test_accuracy_{name}"] = clf.accuracy(v["test"], splits.y["test"])
    return clf, info
