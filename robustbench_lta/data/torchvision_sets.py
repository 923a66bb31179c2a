"""CIFAR-10, CIFAR-100 and SVHN through torchvision, loaded whole into memory.

Files live under the data root (``data.root``, else ``$ROBUSTBENCH_LTA_DATA``, else ``./data``) in
torchvision's own layout. Nothing is downloaded unless ``download=True`` is passed; a missing
dataset is a :class:`UserError` that says which flag to pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .registry import ImageDataset, check_split, register_dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Files torchvision reads (relative to root); a dataset counts as available when they all exist.
_CIFAR10_FILES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + [
    "cifar-10-batches-py/test_batch"
]
_CIFAR100_FILES = ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]


def _files_exist(files: list[str]) -> Callable[[Path], bool]:
    def check(root: Path) -> bool:
        return all((root / f).is_file() for f in files)

    return check


def _svhn_available(root: Path) -> bool:
    return (root / "test_32x32.mat").is_file()


def _missing(title: str, root: Path) -> UserError:
    shown = str(root) if root.is_absolute() or str(root).startswith(".") else f"./{root}"
    return UserError(
        f"{title} not found under {shown}: pass --set data.download=true (or data.root=PATH, "
        "or set ROBUSTBENCH_LTA_DATA)"
    )


def _construct(title: str, root: Path, download: bool, available: bool, make: Callable[[], Any]) -> Any:
    """Build the torchvision dataset, turning its missing-file and download errors into UserError."""
    if not download and not available:
        raise _missing(title, root)
    try:
        return make()
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        if download:
            raise UserError(
                f"{title} under {root} is corrupt or incomplete ({exc}): delete it and retry"
            ) from exc
        raise _missing(title, root) from exc
    except OSError as exc:  # network errors (URLError is an OSError), permissions
        raise UserError(f"could not download {title} into {root}: {exc}") from exc
    except ImportError as exc:  # SVHN needs scipy to read .mat files
        raise UserError(f"{title} needs an extra package to load: {exc}") from exc


def _dataset(
    name: str, data: np.ndarray, labels: Any, classes: list[str], mean: tuple, std: tuple, meta: dict
) -> ImageDataset:
    images = torch.from_numpy(np.ascontiguousarray(data))
    if images.shape[-1] == 3 and images.shape[1] != 3:  # CIFAR stores NHWC
        images = images.permute(0, 3, 1, 2).contiguous()
    return ImageDataset(
        images,
        torch.as_tensor(np.asarray(labels), dtype=torch.int64),
        classes=classes,
        name=name,
        mean=mean,
        std=std,
        meta=meta,
    )


@register_dataset(
    "cifar10",
    description="CIFAR-10 (torchvision), 32x32, 50k train / 10k test",
    num_classes=10,
    image_size=(32, 32),
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    is_available=_files_exist(_CIFAR10_FILES),
)
def load_cifar10(split: str, root: Path, download: bool, n: int | None, seed: int) -> ImageDataset:
    """CIFAR-10 in torchvision's order (test set as published)."""
    check_split(split, name="cifar10")
    from torchvision.datasets import CIFAR10

    ds = _construct(
        "CIFAR-10",
        root,
        download,
        _files_exist(_CIFAR10_FILES)(root),
        lambda: CIFAR10(str(root), train=split == "train", download=download),
    )
    meta = {"split": split, "root": str(root)}
    return _dataset("cifar10", ds.data, ds.targets, list(ds.classes), CIFAR10_MEAN, CIFAR10_STD, meta)


@register_dataset(
    "cifar100",
    description="CIFAR-100 (torchvision), 32x32, 100 fine classes, 50k train / 10k test",
    num_classes=100,
    image_size=(32, 32),
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
    is_available=_files_exist(_CIFAR100_FILES),
)
def load_cifar100(split: str, root: Path, download: bool, n: int | None, seed: int) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels."""
    check_split(split, name="cifar100")
    from torchvision.datasets import CIFAR100

    ds = _construct(
        "CIFAR-100",
        root,
        download,
        _files_exist(_CIFAR100_FILES)(root),
        lambda: CIFAR100(str(root), train=split == "train", download=download),
    )
    meta = {"split": split, "root": str(root)}
    return _dataset("cifar100", ds.data, ds.targets, list(ds.classes), CIFAR100_MEAN, CIFAR100_STD, meta)


@register_dataset(
    "svhn",
    description="SVHN cropped digits (torchvision), 32x32, 73k train / 26k test",
    num_classes=10,
    image_size=(32, 32),
    mean=SVHN_MEAN,
    std=SVHN_STD,
    is_available=_svhn_available,
)
def load_svhn(split: str, root: Path, download: bool, n: int | None, seed: int) -> ImageDataset:
    """SVHN (``train``, ``test`` or ``extra``); label 0 is the digit 0."""
    check_split(split, ("train", "test", "extra"), name="svhn")
    from torchvision.datasets import SVHN

    ds = _construct(
        "SVHN",
        root,
        download,
        (root / f"{split}_32x32.mat").is_file(),
        lambda: SVHN(str(root), split=split, download=download),
    )
    meta = {"split": split, "root": str(root)}
    classes = [str(d) for d in range(10)]
    return _dataset("svhn", ds.data, ds.labels, classes, SVHN_MEAN, SVHN_STD, meta)
