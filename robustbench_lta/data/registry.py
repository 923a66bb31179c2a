"""In-memory image datasets and the dataset registry.

Every dataset the tool touches is small enough to live in memory as one uint8 tensor
``(N, 3, H, W)`` plus int64 labels (and, where the dataset knows where the object is, float boxes).
Loaders are registered by name with :func:`register_dataset`; :func:`load_dataset` resolves a name
(or an ``imagefolder:PATH`` / ``npz:PATH`` spec) to an :class:`ImageDataset`.

Loaders come from every module of this package (importing :mod:`robustbench_lta.data` scans it, so
a new dataset is one new file), the entry-point group ``robustbench_lta.datasets``, a user's
``--plugins`` file or folder, or plain Python (see :mod:`robustbench_lta.discovery`). This module
imports none of the implementations: they import it.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import discovery
from ..errors import UserError

Indices = Sequence[int] | np.ndarray | torch.Tensor | slice

#: Loaders resolved by a ``scheme:PATH`` prefix rather than a registered name.
DATASET_SCHEMES: dict[str, str] = {
    "imagefolder": "imagefolder:PATH - a folder of class subfolders (or one with train/ and test/ in it)",
    "npz": "npz:PATH - a .npz file with arrays x (uint8 NHWC), y (int) and optionally classes",
}


# ------------------------------------------------------------------------------------------ dataset
class ImageDataset(Dataset):
    """An in-memory labelled image dataset.

    Attributes:
        images: uint8 tensor ``(N, 3, H, W)``.
        labels: int64 tensor ``(N,)``.
        boxes: optional float32 tensor ``(N, 4)``: the object's ``(x0, y0, x1, y1)`` in pixels, end
            exclusive (so ``images[i, :, y0:y1, x0:x1]`` is the object), or ``None``.
        classes: class names, index = label.
        name: the dataset name as it was asked for (e.g. ``cluttered-digits``, ``npz:/path/x.npz``).
        mean, std: per-channel statistics on the [0, 1] scale (models take them as buffers).
        extras: per-sample arrays (first dimension ``N``) carried through :meth:`subset`, e.g.
            ``source_index`` for cluttered-digits.
        meta: provenance (split, seed, generator settings, path); not per-sample.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        *,
        classes: Sequence[str],
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        boxes: torch.Tensor | np.ndarray | None = None,
        extras: dict[str, torch.Tensor | np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, list | tuple) else labels)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N,3,H,W), got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be (N,) with N={images.shape[0]}, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes)}), got [{labels.min()}, {labels.max()}]")
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32)
            if boxes.shape != (images.shape[0], 4):
                raise ValueError(f"boxes must be (N,4), got {tuple(boxes.shape)}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per channel (3)")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.boxes = boxes
        self.classes = [str(c) for c in classes]
        self.name = name
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.extras: dict[str, torch.Tensor] = {}
        for key, value in (extras or {}).items():
            value = torch.as_tensor(value)
            if value.shape[:1] != (images.shape[0],):
                raise ValueError(f"extra {key!r} must have first dimension N={images.shape[0]}")
            self.extras[key] = value
        self.meta = dict(meta or {})

    # -- Dataset protocol
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0), int(self.labels[i])

    # -- conveniences
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def source_index(self) -> np.ndarray | None:
        """Which source item each sample came from, where the dataset records it (else None)."""
        value = self.extras.get("source_index")
        return None if value is None else value.numpy()

    def _index(self, indices: Indices | None) -> torch.Tensor | slice:
        if indices is None:
            return slice(None)
        if isinstance(indices, slice):
            return indices
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {tuple(idx.shape)}")
            return idx.nonzero().flatten()
        if idx.numel() == 0:
            return idx.to(torch.int64).reshape(0)
        if idx.is_floating_point():
            raise ValueError("indices must be integers or a boolean mask")
        return idx.to(torch.int64).reshape(-1)

    def tensors(self, indices: Indices | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 images in [0, 1] ``(n,3,H,W)`` and int64 labels ``(n,)``."""
        idx = self._index(indices)
        return self.images[idx].float().div_(255.0), self.labels[idx].clone()

    def subset(self, indices: Indices) -> ImageDataset:
        """A new dataset with the given samples (in the given order); boxes and extras follow."""
        idx = self._index(indices)
        return ImageDataset(
            self.images[idx].clone(),
            self.labels[idx].clone(),
            classes=self.classes,
            name=self.name,
            mean=self.mean,
            std=self.std,
            boxes=None if self.boxes is None else self.boxes[idx].clone(),
            extras={k: v[idx].clone() for k, v in self.extras.items()},
            meta=self.meta,
        )

    def __repr__(self) -> str:
        h, w = self.image_size
        boxes = ", boxes" if self.boxes is not None else ""
        return f"ImageDataset({self.name!r}, n={len(self)}, {h}x{w}, {self.num_classes} classes{boxes})"


# ----------------------------------------------------------------------------------------- registry
Loader = Callable[..., ImageDataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset without loading it."""

    name: str
    description: str
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_boxes: bool = False
    loader: Loader | None = field(default=None, repr=False, compare=False)
    is_available: Callable[[Path], bool] | None = field(default=None, repr=False, compare=False)
    origin: discovery.Origin | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> str:
        """``builtin``, ``entry-point:<dist>``, ``folder:<path>``, ``file:<path>`` or ``python``."""
        return self.origin.source if self.origin else "python"


_REGISTRY: dict[str, DatasetInfo] = {}
_SCHEME_LOADERS: dict[str, Callable[..., ImageDataset]] = {}


def register_scheme(scheme: str, loader: Callable[..., ImageDataset]) -> None:
    """The loader ``fn(path, split=, n=, name=, **kw)`` behind ``scheme:PATH`` (a key of DATASET_SCHEMES).

    The implementations call this (``imagefolder.py``), so this module never imports them.
    """
    if scheme not in DATASET_SCHEMES:
        raise ValueError(f"unknown dataset scheme {scheme!r}: add its description to DATASET_SCHEMES")
    _SCHEME_LOADERS[scheme] = loader


def register_dataset(
    name: str,
    *,
    description: str,
    num_classes: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    has_boxes: bool = False,
    is_available: Callable[[Path], bool] | None = None,
) -> Callable[[Loader], Loader]:
    """Register ``fn(split, root, download, n, seed, **kw) -> ImageDataset`` under ``name``.

    ``is_available(root: Path) -> bool`` says whether the files are present (None: always, e.g. for
    generated data). Registering a name again from the same module (a reloaded file, a re-run
    notebook cell) replaces it; the same name from another module is a UserError, because a dataset
    silently replaced by another would change what every later sweep measures.
    """
    if ":" in name:
        raise ValueError(f"dataset names cannot contain ':' (reserved for imagefolder:/npz:): {name!r}")

    def decorator(fn: Loader) -> Loader:
        origin = discovery.origin_of(fn)
        old = _REGISTRY.get(name)
        if old is not None and old.origin is not None and old.origin.module != origin.module:
            raise UserError(
                f"dataset name {name!r} is registered twice: by {old.origin.module} ({old.source}"
                f"{', ' + old.origin.file if old.origin.file else ''}) and by {origin.module} "
                f"({origin.source}{', ' + origin.file if origin.file else ''}); rename one of them"
            )
        _REGISTRY[name] = DatasetInfo(
            name=name,
            description=description,
            num_classes=int(num_classes),
            image_size=(int(image_size[0]), int(image_size[1])),
            mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
            std=tuple(float(s) for s in std),  # type: ignore[arg-type]
            has_boxes=has_boxes,
            loader=fn,
            is_available=is_available,
            origin=origin,
        )
        return fn

    return decorator


def _ensure_builtins() -> None:
    # The built-ins are registered by importing this package; installed packages' datasets here.
    discovery.load_entry_points("datasets")


def default_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where downloadable datasets live: ``root``, else ``$ROBUSTBENCH_LTA_DATA``, else ``./data``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("ROBUSTBENCH_LTA_DATA") or "data")


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, sorted by name (``imagefolder:``/``npz:`` are in DATASET_SCHEMES)."""
    _ensure_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _lookup(name: str) -> DatasetInfo:
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    schemes = ", ".join(f"{s}:PATH" for s in DATASET_SCHEMES)
    raise UserError(f"unknown dataset {name!r}{hint}: known datasets are {', '.join(known)}, or {schemes}")


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (UserError listing the known names if there is none)."""
    return _lookup(name)


def dataset_available(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``load_dataset(name, root=root)`` would find its files without downloading."""
    scheme, _, path = name.partition(":")
    if path and scheme in DATASET_SCHEMES:
        return Path(path).expanduser().exists()
    info = _lookup(name)
    if info.is_available is None:
        return True
    return bool(info.is_available(default_root(root)))


def _check_kwargs(fn: Loader, name: str, kw: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"split", "root", "download", "n", "seed", "path", "name"}
    allowed = sorted(p for p in params if p not in fixed)
    for key in kw:
        if key not in params or key in fixed:
            options = ", ".join(allowed) if allowed else "none"
            raise UserError(f"dataset {name!r} takes no argument {key!r} (its arguments: {options})")


def load_dataset(
    name: str,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    n: int | None = None,
    seed: int = 0,
    **kw: Any,
) -> ImageDataset:
    """Load a dataset by registry name, or ``imagefolder:PATH`` / ``npz:PATH``.

    ``split`` is ``"train"`` or ``"test"``. ``n`` keeps the first ``n`` samples (a fixed order, so
    the same ``n`` always gives the same images). ``seed`` only matters for generated data.
    Extra keyword arguments go to the loader (e.g. ``n_fragments`` for cluttered-digits).
    """
    if n is not None and (int(n) != n or n <= 0):
        raise UserError(f"n must be a positive integer, got {n!r}")
    scheme, _, path = name.partition(":")
    if path and scheme in DATASET_SCHEMES:
        loader = _SCHEME_LOADERS[scheme]
        _check_kwargs(loader, name, kw)
        if scheme == "npz":
            check_npz_labels(Path(path).expanduser(), split)
        ds = loader(path, split=split, n=n, name=name, **kw)
    else:
        info = _lookup(name)
        assert info.loader is not None
        _check_kwargs(info.loader, name, kw)
        ds = info.loader(split=split, root=default_root(root), download=download, n=n, seed=seed, **kw)
    if n is not None and len(ds) > n:
        ds = ds.subset(slice(0, int(n)))
    elif n is not None and len(ds) < n:
        warnings.warn(
            f"dataset {name!r} ({split}) has only {len(ds)} samples, fewer than n={n}", stacklevel=2
        )
    ds.meta.setdefault("split", split)
    return ds


#: most classes a dataset without class names may have: labels are class indices 0..K-1, and the
#: names, per-class tables and one-hot targets are all sized by the largest label
MAX_CLASSES = 100_000


def check_npz_labels(file: Path, split: str) -> None:
    """Refuse an npz file whose labels cannot be class indices, before anything is sized by them.

    Without a ``classes`` array the class count is the largest label + 1, so a label of 2**40 would
    make a trillion class names; with one, each label must index it. Reads only ``y`` (and
    ``classes``); an unreadable or incomplete file is left to the loader, which names the problem.
    """
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            yk = f"y_{split}" if f"x_{split}" in keys else "y"
            if yk not in keys:
                return
            y = np.asarray(archive[yk])
            n_names = int(np.asarray(archive["classes"]).size) if "classes" in keys else None
    except (OSError, ValueError):
        return
    if y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        return
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise UserError(f"{file}: label {low} is negative: labels must be class indices 0..K-1")
    if n_names is not None and high >= n_names:
        raise UserError(f"{file}: label {high} has no entry in classes ({n_names} names): labels must "
                        "index the classes array")
    if n_names is None and high >= MAX_CLASSES:
        raise UserError(f"{file}: label {high} would mean {high + 1} classes (at most {MAX_CLASSES} without "
                        "a classes array): labels must be class indices 0..K-1; renumber them, or store "
                        "a classes array naming each one")


def check_split(split: str, allowed: Sequence[str] = ("train", "test"), name: str = "dataset") -> str:
    """Validate a split name for a loader (UserError naming the allowed ones)."""
    if split not in allowed:
        raise UserError(f"{name} has no split {split!r}: use one of {', '.join(allowed)}")
    return split


def interleave_by_class(labels: np.ndarray) -> np.ndarray:
    """A stable order taking one sample of each class in turn (class 0, 1, ..., 0, 1, ...).

    Folder and npz data usually come sorted by class, so "the first n" would be n images of the
    first class; in this order the first n are balanced across classes. Within a class the original
    order is kept, so the order is deterministic and does not depend on n.
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    # rank of each sample within its class
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(labels)) - starts
    return order[np.lexsort((sorted_labels, rank))]


def shared_data_dir() -> Path | None:
    """The shared CIFAR-10 JPEG folder (``mini.npz``, ``train.tar.gz``, ``test.tar.gz``), or None.

    Looks, in order, at ``$ROBUSTBENCH_LTA_SHARED``, then ``shared/data/cifar10-jpeg`` and
    ``../shared/data/cifar10-jpeg`` relative to the working folder, then ``../shared/data/cifar10-jpeg``
    next to the repository this package sits in (for an editable install run from elsewhere).
    Tests and benchmarks use it and skip when it is absent. A set variable that names no folder is
    not silently replaced by a guess: the result is None.
    """
    env = os.environ.get("ROBUSTBENCH_LTA_SHARED")
    if env:
        cand = Path(env).expanduser()
        return cand if cand.is_dir() else None
    tail = Path("shared") / "data" / "cifar10-jpeg"
    cwd = Path.cwd()
    repo = Path(__file__).resolve().parents[2]
    for cand in (cwd / tail, cwd.parent / tail, repo.parent / tail):
        if cand.is_dir():
            return cand
    return None


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of a uint8 ``(N,3,H,W)`` tensor (chunked)."""
    if images.shape[0] == 0:
        raise UserError("cannot compute mean/std of an empty dataset")
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
