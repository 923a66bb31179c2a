"""The base class every built-in classifier derives from, plus small shared helpers.

Conventions (see docs/architecture.md): a model takes float images in [0,1], NCHW, and normalises
them itself with ``mean``/``std`` buffers of shape ``(1,C,1,1)``, so attacks (torchattacks,
foolbox, AutoAttack) can work in image space and a checkpoint carries its own normalisation.

``forward(x)`` returns logits ``(N,K)`` only. ``forward(x, return_attention=True)`` returns
``(logits, maps)``: one ``(N,H,W)`` attention map per attention level, each summing to 1 per
image; models without attention return ``(logits, [])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError

#: CIFAR-10 training-set channel statistics, the default normalisation.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def scale_channels(channels: int, width: float, minimum: int = 4) -> int:
    """``channels * width`` rounded, but never below ``minimum`` (so tiny test widths still work)."""
    return max(int(minimum), int(round(channels * float(width))))


def check_width(width: float) -> float:
    """``width`` as a float, or a UserError if it is not a positive finite number."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise UserError(f"model width must be a positive number, got {width!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"model width must be a positive number (e.g. 1.0 or 0.25), got {width!r}")
    return value


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int, or a UserError if it is not a positive integer."""
    try:
        value = int(num_classes)
        ok = not isinstance(num_classes, bool) and value == num_classes and value >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return value


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in ``model`` (buffers such as mean/std or BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _stats(values: Sequence[float] | torch.Tensor, what: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().cpu().tolist()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"normalisation {what} must be a sequence of numbers, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise UserError(
            f"normalisation {what} must be a non-empty sequence of finite numbers, got {values!r}"
        )
    return out


class ImageClassifier(nn.Module):
    """Base class: [0,1] images in, logits out; mean/std normalisation lives in buffers.

    Subclasses implement :meth:`forward_normalized`, which receives the normalised batch and returns
    ``(logits, maps)``. Attributes set here: ``num_classes``, ``in_channels`` (``len(mean)``),
    ``attention_levels`` (0 for baselines; subclasses set it).

    Args:
        num_classes: number of output logits.
        mean, std: per-channel statistics of the training data on the [0,1] scale (default
            CIFAR-10). Stored as persistent buffers, so they travel with the state_dict.
    """

    attention_levels: int = 0

    def __init__(
        self,
        num_classes: int = 10,
        mean: Sequence[float] | torch.Tensor = CIFAR10_MEAN,
        std: Sequence[float] | torch.Tensor = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        mean_l, std_l = _stats(mean, "mean"), _stats(std, "std")
        if len(mean_l) != len(std_l):
            raise UserError(f"normalisation mean has {len(mean_l)} channels but std has {len(std_l)}")
        if any(s <= 0 for s in std_l):
            raise UserError(f"normalisation std must be positive, got {std_l}")
        self.in_channels = len(mean_l)
        self.register_buffer("mean", torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def has_attention(self) -> bool:
        """True when ``forward(x, return_attention=True)`` returns at least one attention map."""
        return self.attention_levels > 0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` channel-wise; ``x`` is a [0,1] batch ``(N,C,H,W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a (N,{self.in_channels},H,W) batch, got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(N,K)`` and the list of attention maps for an already normalised batch."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits for [0,1] images; with ``return_attention=True`` also the per-level maps."""
        logits, maps = self.forward_normalized(self.normalize(x))
        if return_attention:
            return logits, maps
        return logits


class NormalizedModel(ImageClassifier):
    """Wraps a user's plain ``nn.Module`` so it gets the mean/std buffers of the convention.

    ``create_model`` uses it when normalisation statistics are given but the user's builder does not
    accept ``mean``/``std``. The wrapped network receives normalised images. If the wrapped module
    itself supports ``return_attention=True`` (and says so with ``has_attention``), its maps are
    passed through.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 10,
        mean: Sequence[float] | torch.Tensor = CIFAR10_MEAN,
        std: Sequence[float] | torch.Tensor = CIFAR10_STD,
    ) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std)
        self.net = net
        self.attention_levels = int(getattr(net, "attention_levels", 0) or 0)
        if getattr(net, "has_attention", False) and self.attention_levels == 0:
            self.attention_levels = 1

    def forward_normalized(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.has_attention:
            logits, maps = self.net(z, return_attention=True)
            return logits, list(maps)
        return self.net(z), []
