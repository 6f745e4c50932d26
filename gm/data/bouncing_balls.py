"""Bouncing balls videos (Sutskever & Hinton 2007; Sutskever, Hinton & Taylor 2009), small.

Each sequence shows ``N_BALLS`` balls of radius ``RADIUS`` moving at constant speed in a
``SIDE`` x ``SIDE`` box, reflecting elastically off the walls and off each other (equal
masses).  Frames are rendered as binary discs (a pixel is on when its centre lies inside a
ball), so x_* holds binary frames, shape (n_sequences, T, SIDE * SIDE).  No labels (y = -1),
no real-valued view.  Splits: 400 train, 50 validation, 100 test sequences of T = 20 frames,
generated from a fixed seed.
"""
from __future__ import annotations

import numpy as np

from gm.data.registry import no_fetch, register_dataset
from gm.data.splits import Splits

SIDE = 10          # frame side in pixels, d = SIDE**2
N_BALLS = 2
RADIUS = 1.5       # pixels
SPEED = 0.8        # pixels per frame
FRAMES = 20        # T


def trajectories(n: int, rng: np.random.Generator, *, frames: int = FRAMES, side: int = SIDE,
                 n_balls: int = N_BALLS, radius: float = RADIUS,
                 speed: float = SPEED) -> np.ndarray:
    """Ball centres, (n, frames, n_balls, 2), in pixel coordinates [radius, side - radius].

    Starting positions are drawn without overlap; velocities have norm ``speed`` and uniform
    direction.  Walls reflect the normal component; colliding balls exchange the velocity
    components along the line joining their centres (elastic, equal masses).
    """
    lo, hi = radius, side - radius
    out = np.empty((n, frames, n_balls, 2))
    for s in range(n):
        pos = np.empty((n_balls, 2))
        for b in range(n_balls):          # rejection sampling of non-overlapping starts
            while True:
                p = rng.uniform(lo, hi, 2)
                if all(np.linalg.norm(p - pos[o]) > 2 * radius for o in range(b)):
                    pos[b] = p
                    break
        angle = rng.uniform(0, 2 * np.pi, n_balls)
        vel = speed * np.stack([np.cos(angle), np.sin(angle)], 1)
        for t in range(frames):
            out[s, t] = pos
            pos = pos + vel
            for b in range(n_balls):      # walls
                for a in range(2):
                    if pos[b, a] < lo:
                        pos[b, a], vel[b, a] = 2 * lo - pos[b, a], -vel[b, a]
                    elif pos[b, a] > hi:
                        pos[b, a], vel[b, a] = 2 * hi - pos[b, a], -vel[b, a]
            for b in range(n_balls):      # ball-ball collisions
                for o in range(b + 1, n_balls):
                    delta = pos[b] - pos[o]
                    dist = np.linalg.norm(delta)
                    approaching = np.dot(vel[b] - vel[o], delta) < 0
                    if 0 < dist < 2 * radius and approaching:
                        u = delta / dist
                        exchange = np.dot(vel[b] - vel[o], u) * u
                        vel[b] -= exchange
                        vel[o] += exchange
    return out


def render(centres: np.ndarray, *, side: int = SIDE, radius: float = RADIUS) -> np.ndarray:
    """Binary frames from ball centres (..., n_balls, 2) -> (..., side * side) float32."""
    grid = np.arange(side) + 0.5                               # pixel centres
    yy, xx = np.meshgrid(grid, grid, indexing="ij")            # (side, side)
    cy = centres[..., 0][..., None, None]
    cx = centres[..., 1][..., None, None]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2      # (..., n_balls, side, side)
    frames = inside.any(axis=-3)
    return frames.reshape(*frames.shape[:-2], side * side).astype(np.float32)


def prepare(raw_dir, seed: int = 0, sizes=(400, 50, 100)) -> Splits:
    rng = np.random.default_rng(seed)
    x = {s: render(trajectories(n, rng)) for s, n in zip(("train", "val", "test"), sizes)}
    return Splits("bouncing_balls", x=x,
                  y={s: np.full(len(v), -1, dtype=np.int64) for s, v in x.items()},
                  image_shape=(SIDE, SIDE), n_classes=0, levels=0)


register_dataset("bouncing_balls", fetch=no_fetch, prepare=prepare)
