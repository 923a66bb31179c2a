"""Training data on the device: a whole split as uint8, gathered, augmented and made float per batch.

The whole split lives in memory as uint8 (``ImageDataset.images``); batches are gathered, augmented
(random crop with zero padding, optional horizontal flip) and converted to float on the training
device with batched tensor ops, so there are no DataLoader workers (``num_workers`` is unused).
On CUDA a split smaller than :data:`DEVICE_DATA_LIMIT_BYTES` is kept on the GPU, a larger one in
pinned host memory and copied per batch without blocking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.registry import ImageDataset
from ..devices import needs_pinned_copy, same_device, to_device

#: Keep a whole split on the GPU when it is smaller than this (else gather batches on the CPU).
DEVICE_DATA_LIMIT_BYTES = 4 << 30


def augment(images: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Random crop (zero padding ``padding``, per-image offsets) and random horizontal flip.

    Works on a batch ``(N,C,H,W)`` of any dtype on any device with a few gathers; the random draws
    come from ``generator`` (CPU) so a seed gives the same augmentation on every device.
    """
    n, c, h, w = images.shape
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (N,H)
        cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (N,W)
        padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
        images = padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if flip:
        mask = torch.randint(0, 2, (n,), generator=generator).bool().to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


class DeviceBatches:
    """uint8 images + labels on the device (or pinned on the host when too big), gathered per batch.

    Whether the split is resident on the device is decided once with ``devices.same_device``: a
    tensor moved to ``cuda`` reports ``cuda:0``, and ``torch.device("cuda:0") == torch.device("cuda")``
    is False, which once sent resident CUDA data down the pinned-host path (``pin_memory`` raises there).
    """

    def __init__(self, dataset: ImageDataset, device: torch.device) -> None:
        self.device = device
        images, labels = dataset.images, dataset.labels
        if device.type == "cuda":
            if images.numel() * images.element_size() <= DEVICE_DATA_LIMIT_BYTES:
                images, labels = to_device(images, device), to_device(labels, device)
            elif needs_pinned_copy(images.device, device):
                images, labels = images.pin_memory(), labels.pin_memory()
        self.images, self.labels = images, labels
        self.resident = same_device(images.device, device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            index = index.to(self.images.device, non_blocking=True)
            return self.images[index], self.labels[index]
        return to_device(self.images[index], self.device), to_device(self.labels[index], self.device)


def to_float(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = x.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceBatches, batch_size: int, channels_last: bool = False) -> float:
    """Top-1 accuracy in float32 and eval mode (the model is put back in its previous mode)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    try:
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            x, y = data.get(index)
            correct += (model(to_float(x, channels_last)).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return int(correct) / max(len(data), 1)
