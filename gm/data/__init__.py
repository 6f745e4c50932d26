"""Datasets: registry, fetching with checksums, binarisation and fixed splits."""
from gm.data.registry import dataset_names, dataset_spec, register_dataset
from gm.data.splits import Splits, load_splits

__all__ = ["Splits", "dataset_names", "dataset_spec", "load_splits", "register_dataset"]
