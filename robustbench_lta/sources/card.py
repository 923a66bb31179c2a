"""What every model source resolves to: a module taking [0,1] images and a typed card.

A :class:`ModelCard` says where a model came from and how it expects its input (input size,
mean/std, class names), and carries the numbers its publisher reported (RobustBench's clean and
AutoAttack accuracy) so the sweep can put them beside the measured ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Published:
    """Accuracies a model's publisher reported (fractions in [0,1]), and where they come from."""

    clean_acc: float | None
    robust_acc: float | None
    attack: str            # what the robust accuracy was measured with, e.g. "autoattack"
    norm: str              # "linf" / "l2", as the engine names norms
    eps: float | None      # on the [0,1] scale
    origin: str            # e.g. "RobustBench model_info (commit 78fcc9e)"
    reference: str = ""    # paper or page

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelCard:
    """The typed card of a resolved model (``as_dict()`` is what the manifest records).

    ``mean``/``std`` are the normalisation applied inside the returned module (identity when the
    network normalises itself, as RobustBench models do). ``input_size`` is ``(H, W)``, or None when
    unknown. ``preprocess`` holds the library's recommended resize/crop for data of another size.
    """

    source: str
    architecture: str
    weights_sha256: str
    num_classes: int
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    class_names: list[str] | None = None
    pretrained: bool = True
    published: Published | None = None
    dataset: dict[str, Any] | None = None      # default data to attack: {"name", "root", "kwargs"}
    preprocess: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None
    input_resize: tuple[int, int] | None = None   # inputs resized to this inside the module
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the project checkpoint's own card

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size) if self.input_size else None
        out["input_resize"] = list(self.input_resize) if self.input_resize else None
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["published"] = self.published.as_dict() if self.published else None
        out["sha256"] = self.weights_sha256  # the key the manifest and earlier cards use
        return out


@dataclass
class ResolvedModel:
    module: nn.Module
    card: ModelCard

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Content, never paths: the weights, the architecture and the normalisation."""
        fp = {"sha256": self.card.weights_sha256, "architecture": self.card.architecture,
              "mean": list(self.card.mean), "std": list(self.card.std)}
        if self.card.input_resize:
            fp["input_resize"] = list(self.card.input_resize)
        return fp


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for [0,1] images: normalisation inside, as the engine expects.

    With ``resize=(H, W)`` images of another size are first resized (bilinear, differentiable), so
    attacks work on the data's own pixels and budgets are measured there. ``return_attention=True``
    is passed through when the wrapped network supports it.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 resize: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.resize = tuple(int(v) for v in resize) if resize else None
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))
        self._identity = all(float(m) == 0 for m in mean) and all(float(s) == 1 for s in std)

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.net, "has_attention", False))

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> Any:
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = torch.nn.functional.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        z = x if self._identity else (x - self.mean) / self.std
        if return_attention:
            if self.has_attention:
                return self.net(z, return_attention=True)
            return self.net(z), []
        return self.net(z)


def state_sha256(module_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, shapes, dtypes and values (for weights without a file)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    from ..utils import sha256_file

    return sha256_file(path)
