"""Model resolution for the engine: a source (checkpoint, registry name, nn.Module) -> a LoadedModel.

Also what the engine promises a caller's module: it is handed back as it was found
(:class:`ModuleState`), and no attack may change it unnoticed (:class:`WeightsGuard`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DataSpec, SweepModelSpec
from ..sources import resolve_model_source


@dataclass
class LoadedModel:
    label: str
    module: nn.Module
    source: str
    fingerprint: dict[str, Any]   # content only (weights sha256, architecture): never a path
    card: dict[str, Any] | None = None
    spec: SweepModelSpec | None = None  # how a worker process loads it again (None: an in-process module)

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.module, "has_attention", False))

    @property
    def sha256(self) -> str:
        return str(self.fingerprint.get("sha256", ""))


def state_sha256(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fingerprint(module: nn.Module, arch: str) -> dict[str, Any]:
    return {"arch": arch, "sha256": state_sha256(module)}


def load_sweep_model(spec: SweepModelSpec | nn.Module, label: str | None, seed: int) -> LoadedModel:
    """Any nn.Module, or a model source resolved by :mod:`robustbench_lta.sources` (checkpoint,
    registry name, robustbench:, timm:, torchvision:, hf-hub:, bare weights with ``arch``)."""
    if isinstance(spec, nn.Module):
        return LoadedModel(label or type(spec).__name__, spec, f"module:{type(spec).__name__}",
                           _fingerprint(spec, type(spec).__name__), getattr(spec, "card", None))
    resolved = resolve_model_source(spec.source, arch=spec.arch, name=label or spec.name,
                                    num_classes=spec.num_classes, width=spec.width, seed=seed,
                                    download=spec.download, resize_inputs=spec.resize_inputs)
    card = resolved.card
    default = (spec.source.split(":", 1)[1].rstrip("/").split("/")[-1].split("@")[0]
               if spec.source.startswith(("robustbench:", "timm:", "torchvision:", "hf-hub:"))
               else Path(spec.source).stem)
    if card.details.get("model", {}).get("name"):  # project checkpoints are labelled by architecture
        default = str(card.details["model"]["name"])
    return LoadedModel(label or spec.name or default, resolved.module, card.source, resolved.fingerprint,
                       card.as_dict(), spec)


def card_data_spec(card: Mapping[str, Any] | None) -> DataSpec | None:
    """The dataset a checkpoint was trained on, as a DataSpec (its test split is attacked)."""
    if not card:
        return None
    training = card.get("training") or card.get("training_config") or {}
    data = training.get("data") if isinstance(training, Mapping) else None
    if isinstance(data, Mapping) and data.get("name"):
        return DataSpec(name=data["name"], root=data.get("root"), kwargs=dict(data.get("kwargs") or {}))
    ds = card.get("dataset")
    if isinstance(ds, Mapping) and ds.get("name"):
        return DataSpec(name=ds["name"], root=ds.get("root"), kwargs=dict(ds.get("kwargs") or {}))
    if isinstance(ds, str):
        return DataSpec(name=ds)
    return None


# ------------------------------------------------------------------------ a module handed back
@dataclass
class ModuleState:
    """Everything the engine changes on a module, captured so it can be put back exactly.

    Train/eval mode of every submodule, each parameter's ``requires_grad``, the memory format of
    every 4-D parameter and buffer, and the device.
    """

    training: list[bool]
    requires_grad: list[bool]
    channels_last: list[bool]
    device: torch.device | None
    _tensors: list[torch.Tensor] = field(default_factory=list, repr=False)

    @classmethod
    def capture(cls, module: nn.Module) -> ModuleState:
        tensors = [*module.parameters(), *module.buffers()]
        first = next(iter(tensors), None)
        return cls(
            training=[m.training for m in module.modules()],
            requires_grad=[p.requires_grad for p in module.parameters()],
            channels_last=[t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)
                           and not t.is_contiguous() for t in tensors],
            device=first.device if first is not None else None,
            _tensors=tensors,
        )

    def restore(self, module: nn.Module) -> None:
        if self.device is not None:
            module.to(self.device)
        for m, flag in zip(module.modules(), self.training, strict=False):
            m.training = flag
        for p, flag in zip(module.parameters(), self.requires_grad, strict=False):
            p.requires_grad_(flag)
        tensors = [*module.parameters(), *module.buffers()]
        for t, cl in zip(tensors, self.channels_last, strict=False):
            if t.ndim == 4:
                fmt = torch.channels_last if cl else torch.contiguous_format
                if not t.is_contiguous(memory_format=fmt):
                    t.data = t.data.contiguous(memory_format=fmt)


class WeightsGuard:
    """A copy of the weights taken before attacking: detects (and undoes) any change to them.

    An attack that writes into the model (a plugin bug, or an adapter that trains) would poison
    every later cell of that model; comparing after each unit keeps the damage to that unit.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.reference = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def changed(self) -> list[str]:
        now = self.module.state_dict()
        return [k for k, ref in self.reference.items()
                if k not in now or now[k].shape != ref.shape or not torch.equal(now[k], ref)]

    def restore(self) -> None:
        with torch.no_grad():
            now = self.module.state_dict()
            for k, ref in self.reference.items():
                now[k].copy_(ref)
