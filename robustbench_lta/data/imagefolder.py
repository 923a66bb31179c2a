"""Bring-your-own data: ``imagefolder:PATH`` (class subfolders of images) and ``npz:PATH`` (arrays).

Both decode everything into memory once. Class indices follow torchvision's ``ImageFolder``: class
names sorted. Sample order interleaves the classes (one image of each class in turn, file order kept
within a class) because such data usually comes sorted by class, and "the first n images" should be
balanced; ``order="file"`` keeps the plain file order instead. The original position of each sample
is kept in ``dataset.extras["file_index"]``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .registry import ImageDataset, channel_stats, interleave_by_class, register_scheme

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _order(labels: np.ndarray, order: str) -> np.ndarray:
    if order == "interleave":
        return interleave_by_class(labels)
    if order == "file":
        return np.arange(len(labels))
    raise UserError(f"order must be 'interleave' or 'file', got {order!r}")


def _stats(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The given mean/std, or (for whichever is missing) the per-channel statistics of ``images``."""
    if mean is None or std is None:
        measured_mean, measured_std = channel_stats(images)
        mean = measured_mean if mean is None else mean
        std = measured_std if std is None else std
    if len(mean) != 3 or len(std) != 3:
        raise UserError("mean and std need three values (one per RGB channel)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _split_root(path: Path, split: str) -> Path:
    """``PATH/split`` when PATH holds split folders, else PATH itself (one split)."""
    if (path / split).is_dir():
        return path / split
    present = [s for s in ("train", "test", "val", "valid", "validation") if (path / s).is_dir()]
    if present:
        raise UserError(
            f"{path} has split folders {', '.join(present)} but no {split}/: "
            f"use split {present[0]!r} or point PATH at the class folders"
        )
    return path


def _walk_once(top: Path, seen: dict[str, str]) -> Iterator[tuple[str, str, list[str]]]:
    """``(folder, its real path, file names)`` as ``os.walk(top, followlinks=True)``, refusing to
    enter a folder twice: a link back up the tree (``3/again -> ../3``) would otherwise be walked
    until the path is too long, each pass reading the same images again, and two links to one
    folder would count its images twice."""
    for folder, _dirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            loop = Path(seen[real]) in Path(folder).parents
            raise UserError(f"{folder} leads back to {seen[real]} ("
                            f"{'a symbolic link loop' if loop else 'two links to one folder'}): its images "
                            "would be read more than once; remove the link")
        seen[real] = folder
        yield folder, real, names


def find_images(
    root: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image files and labels in torchvision ``ImageFolder`` order.

    With ``classes`` (e.g. a model card's list) each subfolder's label is its index in that list, so
    a folder holding only some of the classes keeps their indices (never relabelled 0..k-1).
    """
    present = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not present:
        raise UserError(f"no class subfolders in {root}: an image folder needs one subfolder per class")
    if classes is not None:
        full = [str(c) for c in classes]
        unknown = [c for c in present if c not in full]
        if unknown:
            shown = ", ".join(full[:12]) + (", ..." if len(full) > 12 else "")
            raise UserError(
                f"class folder(s) {', '.join(unknown[:5])} in {root} are not among the given classes "
                f"({shown}): rename them, or attack a model trained on these classes"
            )
    else:
        full = present
    files: list[Path] = []
    labels: list[int] = []
    seen_dirs: dict[str, str] = {}   # real path -> the folder first reached there
    seen_files: dict[str, Path] = {}
    for cls in present:
        index = full.index(cls)
        found = 0
        for folder, real_folder, names in sorted(_walk_once(root / cls, seen_dirs)):
            for fname in sorted(names):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    path = Path(folder) / fname
                    # a linked file may be an image counted elsewhere already (same or another class)
                    real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_folder,
                                                                                           fname)
                    if real in seen_files:
                        raise UserError(f"{path} is the same file as {seen_files[real]} (a symbolic link): "
                                        "it would be read twice, or under two classes; remove one of them")
                    seen_files[real] = path
                    files.append(path)
                    labels.append(index)
                    found += 1
        if not found:
            raise UserError(
                f"class folder {root / cls} holds no images ({', '.join(IMG_EXTENSIONS)}): "
                "add some or remove it"
            )
    return full, files, np.asarray(labels, dtype=np.int64)


def _transform(resize: int | Sequence[int] | None, crop: int | Sequence[int] | None,
               interpolation: str) -> Any:
    """torchvision's Resize (shorter side to ``resize``, or to (H, W)) then CenterCrop, or None."""
    if resize is None and crop is None:
        return None
    from torchvision import transforms

    try:
        mode = transforms.InterpolationMode(interpolation)
    except ValueError:
        modes = ", ".join(m.value for m in transforms.InterpolationMode)
        raise UserError(f"interpolation must be one of {modes}, got {interpolation!r}") from None
    steps = []
    for what, value in (("resize", resize), ("crop", crop)):
        if value is None:
            continue
        size = [value] if isinstance(value, int) else list(value)
        if not size or len(size) > 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise UserError(f"{what} must be a positive integer or [height, width], got {value!r}")
        steps.append(transforms.Resize(size if len(size) == 2 else size[0], interpolation=mode,
                                       antialias=True) if what == "resize" else transforms.CenterCrop(size))
    return transforms.Compose(steps)


def _decode(path: Path, transform: Any = None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            return np.asarray(transform(rgb) if transform is not None else rgb)
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def load_imagefolder(
    path: str | os.PathLike[str],
    split: str = "test",
    n: int | None = None,
    name: str | None = None,
    order: str = "interleave",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int | None = None,
    resize: int | Sequence[int] | None = None,
    crop: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    classes: Sequence[str] | None = None,
) -> ImageDataset:
    """Decode a folder of class subfolders into memory (only the first ``n`` if given).

    ``PATH`` may be the folder of class subfolders, or a folder with ``train/`` and ``test/`` in it
    (picked by ``split``). ``resize`` (shorter side, or ``[H, W]``) and ``crop`` (centre) apply
    torchvision's transforms while decoding, so folders of mixed sizes (ImageNet's validation set)
    load; without them all images must have the same size. ``classes`` fixes the label of each
    subfolder to its index in that list (a model card's classes). ``mean``/``std`` default to the
    per-channel statistics of the loaded images.
    """
    base = Path(path).expanduser()
    if not base.is_dir():
        raise UserError(f"image folder {base} does not exist (imagefolder:PATH needs a directory)")
    root = _split_root(base, split)
    class_list, files, labels = find_images(root, classes)
    idx = _order(labels, order)
    if n is not None:
        idx = idx[: int(n)]
    transform = _transform(resize, crop, interpolation)
    workers = workers or min(8, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda f: _decode(f, transform), [files[i] for i in idx], chunksize=64))
    shapes = Counter(a.shape[:2] for a in arrays)
    if len(shapes) > 1:
        (common, count), *_ = shapes.most_common()
        pos = next(k for k, a in enumerate(arrays) if a.shape[:2] != common)
        odd_h, odd_w = arrays[pos].shape[:2]
        raise UserError(
            f"images in {root} differ in size ({count} are {common[1]}x{common[0]}, but {files[idx[pos]]} is "
            f"{odd_w}x{odd_h}): pass resize= and crop= (e.g. --set data.kwargs.resize=256 "
            "--set data.kwargs.crop=224) or resize them all to one size first"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    m, s = _stats(images, mean, std)
    return ImageDataset(
        images,
        torch.from_numpy(labels[idx]),
        classes=class_list,
        name=name or f"imagefolder:{path}",
        mean=m,
        std=s,
        extras={"file_index": torch.from_numpy(idx.astype(np.int64))},
        meta={"split": split, "root": str(root), "order": order, "resize": resize, "crop": crop,
              "interpolation": interpolation if (resize or crop) else None},
    )


def load_npz(
    path: str | os.PathLike[str],
    split: str = "test",
    n: int | None = None,
    name: str | None = None,
    order: str = "interleave",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Load arrays ``x`` (uint8 NHWC; NCHW, NHW and NHW1 are accepted too), ``y`` (int) and optional
    ``classes`` from a ``.npz`` file. A file holding ``x_train``/``y_train`` and ``x_test``/``y_test``
    is read by split. Never unpickles (object arrays are refused)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"npz file {file} does not exist")
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
            if xk not in keys or yk not in keys:
                raise UserError(
                    f"{file} needs arrays 'x' and 'y' (or x_{split}/y_{split}); it has {sorted(keys)}"
                )
            x, y = archive[xk], archive[yk]
            classes_arr = archive["classes"] if "classes" in keys else None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file} as .npz with plain arrays: {exc}") from exc
    x = _as_nchw(x, file)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{file}: y must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise UserError(f"{file}: labels must be >= 0")
    if classes_arr is not None:
        classes = [str(c) for c in np.asarray(classes_arr).reshape(-1)]
    else:
        classes = [str(c) for c in range(int(y.max()) + 1 if len(y) else 0)]
    if len(y) and y.max() >= len(classes):
        raise UserError(f"{file}: label {int(y.max())} has no entry in classes ({len(classes)} names)")
    idx = _order(y, order)
    if n is not None:
        idx = idx[: int(n)]
    images = torch.from_numpy(np.ascontiguousarray(x[idx]))
    m, s = _stats(images, mean, std)
    return ImageDataset(
        images,
        torch.from_numpy(y[idx].astype(np.int64)),
        classes=classes,
        name=name or f"npz:{path}",
        mean=m,
        std=s,
        extras={"file_index": torch.from_numpy(idx.astype(np.int64))},
        meta={"split": split, "path": str(file), "order": order},
    )


def _as_nchw(x: np.ndarray, file: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        raise UserError(
            f"{file}: x must be uint8 pixels (0-255), got {x.dtype}: convert with (x*255).astype(uint8)"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"{file}: x must be NHWC images, got shape {x.shape}")
    if x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise UserError(f"{file}: x must have 1 or 3 channels (NHWC), got shape {x.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return x


register_scheme("imagefolder", load_imagefolder)
register_scheme("npz", load_npz)
