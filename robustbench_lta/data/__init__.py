"""Datasets: an in-memory :class:`ImageDataset`, the registry, and the built-in loaders.

Importing this package registers ``cluttered-digits`` (generated, the default), ``cifar10``,
``cifar100`` and ``svhn`` (torchvision); ``imagefolder:PATH`` and ``npz:PATH`` need no registration.
"""

from __future__ import annotations

from . import cluttered_digits, imagefolder, torchvision_sets  # noqa: F401  (importing registers them)
from .registry import (
    DATASET_SCHEMES,
    DatasetInfo,
    ImageDataset,
    channel_stats,
    dataset_available,
    dataset_info,
    default_root,
    list_datasets,
    load_dataset,
    register_dataset,
    shared_data_dir,
)

__all__ = [
    "DATASET_SCHEMES",
    "DatasetInfo",
    "ImageDataset",
    "channel_stats",
    "dataset_available",
    "dataset_info",
    "default_root",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "shared_data_dir",
]
