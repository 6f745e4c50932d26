"""Image grids drawn with numpy and written by Pillow (no torchvision; no matplotlib, whose
import would cost every evaluate process about a second)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from gm.io import atomic_path


def tile(images: np.ndarray, image_shape: tuple[int, int], ncols: int | None = None,
         pad: int = 1) -> np.ndarray:
    """(n, h*w) values in [0, 1] -> one (rows*(h+pad)+pad, cols*(w+pad)+pad) mosaic."""
    h, w = image_shape
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, img in enumerate(np.clip(images.reshape(n, h, w), 0, 1)):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return grid


def save_grid(path: Path, images: np.ndarray, image_shape: tuple[int, int], *,
              ncols: int | None = None, scale: int = 4) -> None:
    """Write a PNG mosaic of ``images`` (n, h*w), each pixel drawn as scale x scale."""
    grid = tile(images, image_shape, ncols)
    big = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    pixels = np.rint(np.clip(big, 0.0, 1.0) * 255).astype(np.uint8)
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(pixels).save(tmp, format="png")
