"""Datasets: an in-memory :class:`ImageDataset`, the registry, and the built-in loaders.

Importing this package registers ``cluttered-digits`` (generated, the default), ``cifar10``,
``cifar100`` and ``svhn`` (torchvision); ``imagefolder:PATH`` and ``npz:PATH`` need no registration.
Every module in this folder is imported (:mod:`pkgutil` scan), so adding a dataset is adding one
file that uses ``@register_dataset``; nothing else needs an edit.
"""

from __future__ import annotations

from ..discovery import import_package_modules
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

import_package_modules(__name__, "dataset")

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
