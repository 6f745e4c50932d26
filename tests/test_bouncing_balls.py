"""Bouncing balls sequences: shapes, determinism, physics (speed, walls, no teleporting)."""
import numpy as np

from gm.data import dataset_spec
from gm.data.bouncing_balls import N_BALLS, RADIUS, SIDE, SPEED, render, trajectories


def test_splits_shapes_and_values():
    s = dataset_spec("bouncing_balls").prepare(None, sizes=(20, 5, 10))
    assert s.x["train"].shape == (20, 20, SIDE * SIDE) and s.x["test"].shape == (10, 20, 100)
    assert s.data_dim == SIDE * SIDE and s.image_shape == (SIDE, SIDE)
    assert set(np.unique(s.x["train"])) <= {0.0, 1.0}
    assert (s.y["val"] == -1).all() and s.y["val"].shape == (5,)
    assert (s.x["train"].sum(-1) > 0).all()                   # a ball is always visible


def test_deterministic_given_seed():
    a = dataset_spec("bouncing_balls").prepare(None, sizes=(3, 1, 1))
    b = dataset_spec("bouncing_balls").prepare(None, sizes=(3, 1, 1))
    c = dataset_spec("bouncing_balls").prepare(None, seed=1, sizes=(3, 1, 1))
    assert a.checksum() == b.checksum() != c.checksum()


def test_balls_stay_inside_and_move_at_bounded_speed():
    pos = trajectories(30, np.random.default_rng(0))          # (30, T, balls, 2)
    assert pos.min() >= RADIUS - 1e-9 and pos.max() <= SIDE - RADIUS + 1e-9
    step = np.linalg.norm(np.diff(pos, axis=1), axis=-1)
    # collisions conserve kinetic energy, so no ball exceeds sqrt(n_balls) * SPEED; walls
    # only shorten a step
    assert step.max() <= np.sqrt(N_BALLS) * SPEED + 1e-9
    assert np.median(step) > 0.9 * SPEED                      # and the balls keep moving


def test_render_draws_a_disc():
    # a ball centred on a pixel centre covers it and its 8 neighbours (all within 1.5 px)
    frame = render(np.array([[5.5, 5.5]]), radius=1.5).reshape(SIDE, SIDE)
    assert frame[4:7, 4:7].all() and frame.sum() == 9
    # two balls: the union of their discs
    two = render(np.array([[1.5, 1.5], [8.5, 8.5]]), radius=1.5).reshape(SIDE, SIDE)
    assert two.sum() == 18 and two[0:3, 0:3].all() and two[7:10, 7:10].all()
