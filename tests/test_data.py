"""Dataset formats, fixed splits, options and recorded checksums (tiny generated fixtures)."""
from __future__ import annotations

import numpy as np
import pytest

from gm.data import dataset_names, dataset_spec, load_splits
from gm.data.binarized_mnist import read_amat
from gm.data.fashion_mnist import DEBIAN_DIR
from gm.data.idx import read_idx, write_idx
from gm.data.splits import SPLITS, CarveOptions, carve_indices
from gm.errors import ConfigError, DataError

N_TRAIN, N_TEST, VAL = 60, 20, 12


@pytest.fixture
def mnist_dir(tmp_path):
    """The four MNIST-layout files with random grey images and labels."""
    rng = np.random.default_rng(7)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


@pytest.fixture
def amat_dir(tmp_path):
    rng = np.random.default_rng(3)
    for name, n in (("train", 30), ("valid", 10), ("test", 10)):
        rows = rng.integers(0, 2, (n, 784))
        (tmp_path / f"binarized_mnist_{name}.amat").write_text(
            "\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    return tmp_path


def test_all_datasets_registered():
    assert {"digits", "bars_stripes", "fashion_mnist", "mnist",
            "binarized_mnist"} <= set(dataset_names())


@pytest.mark.parametrize("params, field", [
    ({"max_tran": 5}, "datasets.mnist.max_tran"),
    ({"max_train": "5"}, "datasets.mnist.max_train"),
    ({"max_train": 0}, "datasets.mnist.max_train"),
    ({"val_size": -1}, "datasets.mnist.val_size"),
])
def test_bad_options_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        dataset_spec("mnist").check_options(params)
    assert err.value.field == field
    with pytest.raises(ConfigError, match="datasets.digits.max_train"):
        dataset_spec("digits").check_options({"max_train": 5})


def test_idx_roundtrip_and_bad_magic(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\0\0\0\0")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a.idx").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_carve_is_a_fixed_partition_and_subsets_nest():
    full = carve_indices(100, 30, CarveOptions(val_size=20), seed=0)
    assert sorted(np.concatenate([full["train"], full["val"]])) == list(range(100))
    assert len(full["val"]) == 20 and sorted(full["test"]) == list(range(30))
    again = carve_indices(100, 30, CarveOptions(val_size=20), seed=0)
    assert all(np.array_equal(full[s], again[s]) for s in SPLITS)
    other = carve_indices(100, 30, CarveOptions(val_size=20), seed=1)
    assert not np.array_equal(full["val"], other["val"])
    small = carve_indices(100, 30, CarveOptions(val_size=20, max_train=10, max_val=5,
                                                max_test=7), seed=0)
    assert [len(small[s]) for s in SPLITS] == [10, 5, 7]
    assert all(set(small[s]) <= set(full[s]) for s in SPLITS)
    with pytest.raises(DataError, match="val_size"):
        carve_indices(10, 5, CarveOptions(val_size=10), seed=0)


def test_mnist_dynamic_binarization_and_real_view(mnist_dir):
    s = dataset_spec("mnist").prepare(mnist_dir, 0, val_size=VAL)
    assert [len(s.x[p]) for p in SPLITS] == [N_TRAIN - VAL, VAL, N_TEST]
    assert s.binarization == "dynamic" and s.data_dim == 784 and s.levels == 256
    idx = carve_indices(N_TRAIN, N_TEST, CarveOptions(val_size=VAL), seed=0)
    source = {p: read_idx(mnist_dir / f"{f}-images-idx3-ubyte.gz").reshape(-1, 784)
              for p, f in (("train", "train"), ("test", "t10k"))}
    for p in SPLITS:
        k = source["test" if p == "test" else "train"][idx[p]].astype(np.float32)
        assert (k / 256 <= s.r[p]).all() and (s.r[p] <= (k + 1) / 256).all()
        assert (s.r[p] < 1).all()
        if p == "train":          # probabilities, sampled afresh by the training loop
            np.testing.assert_allclose(s.x[p], k / 255, atol=1e-6)
        else:                     # binarised once with a fixed seed
            assert set(np.unique(s.x[p])) == {0.0, 1.0}
            assert (s.x[p][k == 0] == 0).all() and (s.x[p][k == 255] == 1).all()
            assert abs(s.x[p].mean() - k.mean() / 255) < 0.01


def test_fixed_splits_are_deterministic_and_checksum_recorded(mnist_dir, tmp_path):
    prep = dataset_spec("mnist").prepare
    a, b = prep(mnist_dir, 0, val_size=VAL), prep(mnist_dir, 0, val_size=VAL)
    c = prep(mnist_dir, 1, val_size=VAL)
    assert a.checksum() == b.checksum() != c.checksum()
    digest = a.save(tmp_path / "mnist.npz")
    loaded = load_splits(tmp_path / "mnist.npz")
    assert loaded.checksum() == digest and loaded.binarization == "dynamic"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".npz"] == ["mnist.npz"]


def test_fashion_layout_with_fixed_threshold(mnist_dir):
    opts = CarveOptions(val_size=VAL, max_train=20)
    s = dataset_spec("fashion_mnist").prepare(mnist_dir, 0, val_size=VAL, max_train=20)
    assert s.binarization == "fixed" and len(s.x["train"]) == 20
    idx = carve_indices(N_TRAIN, N_TEST, opts, seed=0)
    for p in SPLITS:
        f = "t10k" if p == "test" else "train"
        k = read_idx(mnist_dir / f"{f}-images-idx3-ubyte.gz").reshape(-1, 784)[idx[p]]
        np.testing.assert_array_equal(s.x[p], k / 255 >= 0.5)
        np.testing.assert_array_equal(s.y[p], np.arange(N_TEST if p == "test" else N_TRAIN)
                                      [idx[p]] % 10)


def test_binarized_mnist_fixed_split(amat_dir):
    s = dataset_spec("binarized_mnist").prepare(amat_dir, 0)
    assert [len(s.x[p]) for p in SPLITS] == [30, 10, 10] and s.r == {}
    np.testing.assert_array_equal(s.x["val"], read_amat(amat_dir / "binarized_mnist_valid.amat"))
    sub = dataset_spec("binarized_mnist").prepare(amat_dir, 0, max_train=8)
    assert len(sub.x["train"]) == 8 and sub.checksum() != s.checksum()
    assert all((sub.x["train"][:, None] == s.x["train"][None]).all(-1).any(1))
    with pytest.raises(ConfigError, match="datasets.binarized_mnist.val_size"):
        dataset_spec("binarized_mnist").prepare(amat_dir, 0, val_size=3)


def test_amat_rejects_a_truncated_file(amat_dir):
    path = amat_dir / "binarized_mnist_test.amat"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_amat(path)


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(),
                    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_DIR} "
                           "absent): apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package(tmp_path):
    spec = dataset_spec("fashion_mnist")
    spec.fetch(tmp_path / "raw", mirror="http://127.0.0.1:9/unreachable", retries=0)  # no download
    opts = {"max_train": 500, "max_val": 100, "max_test": 200}
    s = spec.prepare(tmp_path / "raw", 0, **opts)
    assert [len(s.x[p]) for p in SPLITS] == [500, 100, 200]
    assert s.checksum() == spec.prepare(tmp_path / "raw", 0, **opts).checksum()
    assert set(s.y["test"]) == set(range(10)) and 0.2 < s.x["train"].mean() < 0.5
