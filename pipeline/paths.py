"""Where the pipeline keeps each dataset's files and each run's results (relative to the
project root, the stages' working directory)."""
from __future__ import annotations

from pathlib import Path


def raw_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def processed_path(dataset: str) -> Path:
    return Path("data/processed") / f"{dataset}.npz"


def classifier_path(dataset: str) -> Path:
    return Path("results") / dataset / "classifier.pt"


def run_dir(dataset: str, model: str, seed: int) -> Path:
    return Path("results") / dataset / model / f"seed{seed}"
