"""Datasets read one image at a time, for evaluation sets too large to hold in memory.

:class:`ImageFolderStream` indexes an ``imagefolder:PATH`` (file names and labels only) and decodes,
resizes and crops each image when it is asked for, as uint8 ``(3, H, W)``: the sweep engine reads it
through a ``DataLoader`` with workers, one batch at a time, so memory is bounded by a batch (not by
the dataset). Sample order and labels are the same as :func:`load_imagefolder`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .imagefolder import _decode, _order, _split_root, find_images


class ImageFolderStream(Dataset):
    """A folder of class subfolders, decoded lazily (``resize``: shorter side; ``crop``: centre)."""

    def __init__(self, path: str | os.PathLike[str], split: str = "test", n: int | None = None,
                 order: str = "interleave", resize: int | Sequence[int] | None = None,
                 crop: int | Sequence[int] | None = None, classes: Sequence[str] | None = None) -> None:
        base = Path(path).expanduser()
        if not base.is_dir():
            raise UserError(f"image folder {base} does not exist (imagefolder:PATH needs a directory)")
        self.root = _split_root(base, split)
        found, files, labels = find_images(self.root)
        if classes is not None:  # keep the model's label indices for a folder holding some classes
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise UserError(f"class folders {', '.join(unknown[:5])} in {self.root} are not among the "
                                f"model's classes ({', '.join(list(classes)[:5])}, ...)")
            remap = np.array([list(classes).index(c) for c in found], dtype=np.int64)
            labels = remap[labels]
            found = list(classes)
        idx = _order(labels, order)
        if n is not None:
            idx = idx[: int(n)]
        self.files = [files[i] for i in idx]
        self.targets = labels[idx].astype(np.int64)
        self.classes = list(found)
        self.name = f"imagefolder:{path}"
        self.resize, self.crop = resize, crop
        self._transform: Any = None

    def __len__(self) -> int:
        return len(self.files)

    def _pipeline(self) -> Any:
        if self._transform is None and (self.resize or self.crop):
            from torchvision.transforms import v2

            steps: list[Any] = []
            if self.resize:
                steps.append(v2.Resize(self.resize, antialias=True))
            if self.crop:
                steps.append(v2.CenterCrop(self.crop))
            self._transform = v2.Compose(steps)
        return self._transform

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.ascontiguousarray(_decode(self.files[i]))).permute(2, 0, 1)
        pipeline = self._pipeline()
        if pipeline is not None:
            img = pipeline(img)
        return img.contiguous(), int(self.targets[i])
