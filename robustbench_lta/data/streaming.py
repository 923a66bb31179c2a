"""Datasets read one image at a time, for evaluation sets too large to hold in memory.

:class:`ImageFolderStream` indexes an ``imagefolder:PATH`` (file names and labels only) and decodes,
resizes and crops each image when it is asked for, as uint8 ``(3, H, W)``: the sweep engine reads it
through a ``DataLoader`` with workers, one batch at a time, so memory is bounded by a batch (not by
the dataset). Sample order, labels, ``resize``/``crop`` and ``classes`` behave exactly as in
:func:`~robustbench_lta.data.imagefolder.load_imagefolder` (the same helpers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .imagefolder import _decode, _order, _split_root, _transform, find_images


class ImageFolderStream(Dataset):
    """A folder of class subfolders, decoded lazily (``resize``: shorter side; ``crop``: centre)."""

    def __init__(self, path: str | os.PathLike[str], split: str = "test", n: int | None = None,
                 order: str = "interleave", resize: int | Sequence[int] | None = None,
                 crop: int | Sequence[int] | None = None, classes: Sequence[str] | None = None,
                 interpolation: str = "bilinear") -> None:
        base = Path(path).expanduser()
        if not base.is_dir():
            raise UserError(f"image folder {base} does not exist (imagefolder:PATH needs a directory)")
        self.root = _split_root(base, split)
        self.classes, files, labels = find_images(self.root, classes)
        idx = _order(labels, order)
        if n is not None:
            idx = idx[: int(n)]
        self.files = [files[i] for i in idx]
        self.targets = labels[idx].astype(np.int64)
        self.name = f"imagefolder:{path}"
        self.resized = resize is not None or crop is not None
        self.transform = _transform(resize, crop, interpolation)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # PIL's array is read-only (torch warns on it); the CHW copy is writable and the only copy
        chw = np.ascontiguousarray(_decode(self.files[i], self.transform).transpose(2, 0, 1))
        return torch.from_numpy(chw), int(self.targets[i])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the first image as the model receives it (after resize/crop)."""
        h, w = self[0][0].shape[-2:] if len(self) else (0, 0)
        return int(h), int(w)
