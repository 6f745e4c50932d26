"""What the benchmarks share: the command line, one-thread setup, data, interleaved timing.

Every benchmark times its two sides in the SAME process, alternating them rep by rep, and
reports the ratio of medians, so load on a shared machine hits both sides alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

# one BLAS/OpenMP thread for numpy (scikit-learn) and torch alike, set before they load
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, os.environ.get("GM_BENCH_THREADS", "1"))
# no progress bars: a benchmark that calls train_model once per epoch would otherwise time a
# tqdm bar's set-up and close per epoch (about 6 ms here, a third of a digits epoch), which a
# stage pays once per training
os.environ.setdefault("GM_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse(description: str, **extra) -> argparse.Namespace:
    """``--device`` (cpu | cuda | cuda:N), ``--threads`` (CPU threads, both sides), ``--reps``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GM_BENCH_THREADS", "1")))
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions per side")
    for name, (kind, default, help_) in extra.items():
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=help_)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    args.device = torch.device(args.device)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(sides: dict, reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each zero-argument callable, run alternately ``reps`` times each
    (after one untimed warm-up run of each)."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def digits_binary() -> np.ndarray:
    """scikit-learn's digits binarized as gm's digits dataset (grey level >= 8), (1797, 64)."""
    from sklearn.datasets import load_digits
    return (load_digits().data >= 8).astype(np.float32)


def fashion_binary(n: int) -> np.ndarray:
    """The first n Fashion-MNIST training images (Debian package), binarized at 0.5, (n, 784)."""
    from gm.data.fashion_mnist import DEBIAN_DIR
    from gm.data.idx import read_mnist_layout
    images, _ = read_mnist_layout(DEBIAN_DIR)["train"]
    return (images[:n].reshape(n, -1) >= 128).astype(np.float32)


def scratch_project(params: dict, device, keep: str = "") -> Path:
    """A scratch copy of the pipeline (Snakefile, dvc.yaml, pipeline/, configs/) with
    ``params`` over the repository's params.yaml and the given device; gm is imported from the
    installed (editable) package.  In ``keep`` when given, else a new temporary folder."""
    import shutil
    import tempfile

    import yaml
    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "params.yaml").read_text())
    work = Path(keep or tempfile.mkdtemp(prefix="gm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(root / name, work / name)
    for name in ("pipeline", "configs"):      # configs/published.csv is an input of the report
        shutil.copytree(root / name, work / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (work / "params.yaml").write_text(
        yaml.safe_dump({**base, **params, "device": str(device)}, sort_keys=False))
    return work


def report(title: str, rows: list[tuple[str, float, str]]) -> None:
    """Print ``name  value  note`` lines under a title."""
    print(f"\n== {title}")
    for name, value, note in rows:
        print(f"  {name:<48s} {value:10.3f}  {note}")
