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
from ..errors import UserError
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
        check_finite_weights(spec, label or type(spec).__name__)
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
    check_finite_weights(resolved.module, label or spec.name or default)
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


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors: a NaN equals the same NaN (``torch.equal`` says NaN != NaN,
    which made a model with a NaN weight look changed by every attack)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):  # the usual answer, at the old cost; only a mismatch is looked at bit for bit
        return True
    if a.is_floating_point() or a.is_complex():
        size = a.element_size() if a.is_floating_point() else a.element_size() // 2
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        if a.is_complex():
            a, b = torch.view_as_real(a), torch.view_as_real(b)
        return torch.equal(a.view(ints), b.view(ints))
    return torch.equal(a, b)


def nonfinite_weights(module: nn.Module) -> tuple[list[str], int]:
    """Names of the parameters that hold NaN or +-inf and of the float buffers that hold NaN, and how
    many tensors were looked at. Buffers may hold inf on purpose (attention masks); NaN never."""
    bad: list[str] = []
    count = 0
    for kind, named in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in named:
            if not t.is_floating_point() or t.is_meta or nn.parameter.is_lazy(t):
                continue
            count += 1
            with torch.no_grad():
                ok = bool(torch.isfinite(t).all()) if kind == "param" else not bool(torch.isnan(t).any())
            if not ok:
                bad.append(name)
    return bad, count


def check_finite_weights(module: nn.Module, label: str) -> None:
    """Refuse a model with NaN weights: every output is NaN, every prediction arbitrary, and each
    cell would fail in its own way (said once here instead of once per cell)."""
    bad, count = nonfinite_weights(module)
    if bad:
        raise UserError(f"model {label!r} has NaN or infinite weights ({len(bad)} of {count} tensors, e.g. "
                        f"'{bad[0]}'), so its outputs are not finite and no accuracy of it means anything: "
                        "fix or retrain the checkpoint")


class WeightsGuard:
    """A copy of the weights taken before attacking: detects (and undoes) any change to them.

    An attack that writes into the model (a plugin bug, or an adapter that trains) would poison
    every later cell of that model; comparing after each unit keeps the damage to that unit.
    Compared bit for bit, so a NaN weight left alone is not a change.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.reference = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def changed(self) -> list[str]:
        now = self.module.state_dict()
        return [k for k, ref in self.reference.items() if k not in now or not same_bits(now[k], ref)]

    def restore(self) -> None:
        with torch.no_grad():
            now = self.module.state_dict()
            for k, ref in self.reference.items():
                if k in now:
                    now[k].copy_(ref)


#: per-module attributes that change what a forward (or its backward) computes, beside the weights:
#: hook dicts of every kind that runs in forward/backward (state-dict hooks do not) and the
#: containers of submodules, parameters and buffers (a parametrization rewires these)
_MODULE_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                 "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                 "_backward_pre_hooks", "_modules", "_parameters", "_buffers")
_GLOBAL_DICTS = ("_global_forward_hooks", "_global_forward_hooks_with_kwargs",
                 "_global_forward_hooks_always_called", "_global_forward_pre_hooks",
                 "_global_backward_hooks", "_global_backward_pre_hooks")
_MISSING = object()


def _unchanged(now: Any, obj: dict[Any, Any], ref: dict[Any, Any]) -> bool:
    # the same dict object holding the same values by identity (not ==: values are hooks and tensors;
    # a hook removed and re-added is a new handle, hence a change)
    return now is obj and len(now) == len(ref) and all(now.get(k, _MISSING) is v for k, v in ref.items())


def _phrase(attr: str) -> str:
    """'_forward_pre_hooks' -> 'forward pre hook', '_modules' -> 'modules'."""
    return attr.strip("_").replace("_", " ").replace("hooks", "hook")


@dataclass
class _ModuleSnapshot:
    name: str
    module: nn.Module
    cls: type
    training: bool
    own: dict[str, Any]  # instance-level 'forward' (monkeypatched) and '_is_full_backward_hook'
    dicts: dict[str, tuple[dict[Any, Any], dict[Any, Any]]]  # attribute -> (the dict, its contents)


class StateGuard:
    """Everything beside the weights' values that changes a model's forward, captured once and checked
    after each unit: hooks of every kind on every submodule and PyTorch's global module hooks,
    train/eval mode, the class (a parametrization swaps it), an instance-level ``forward``, and which
    submodules, parameters and buffers are attached. A plugin that leaves a hook behind would
    otherwise change every later cell of the model (a global hook: of every model).

    Only references are kept (shallow dict copies): capture and check take well under a millisecond
    for a VGG-16, whatever the size of its weights.
    """

    def __init__(self, module: nn.Module) -> None:
        import torch.nn.modules.module as module_mod

        self._torch = module_mod
        self.snapshots = [self._snap(name, m) for name, m in module.named_modules()]
        self.global_dicts = {n: (getattr(module_mod, n), dict(getattr(module_mod, n))) for n in _GLOBAL_DICTS
                             if isinstance(getattr(module_mod, n, None), dict)}
        self.global_full_backward = getattr(module_mod, "_global_is_full_backward_hook", None)

    @staticmethod
    def _snap(name: str, m: nn.Module) -> _ModuleSnapshot:
        own = {k: vars(m).get(k, _MISSING) for k in ("forward", "_is_full_backward_hook")}
        dicts = {a: (getattr(m, a), dict(getattr(m, a))) for a in _MODULE_DICTS
                 if isinstance(getattr(m, a, None), dict)}
        return _ModuleSnapshot(name, m, type(m), m.training, own, dicts)

    def changed(self) -> list[str]:
        """One short phrase per change ("a forward hook on 'inner.fc'"); empty when nothing changed."""
        out: list[str] = []
        for s in self.snapshots:
            m, where = s.module, f"'{s.name}'" if s.name else "the model"
            if type(m) is not s.cls:
                out.append(f"the class of {where} (now {type(m).__name__}: a parametrization?)")
            if m.training != s.training:
                out.append(f"the {'train' if m.training else 'eval'} mode of {where}")
            if vars(m).get("forward", _MISSING) is not s.own["forward"]:
                out.append(f"the forward method of {where}")
            for attr, (obj, ref) in s.dicts.items():
                if not _unchanged(getattr(m, attr, None), obj, ref):
                    out.append(f"a {_phrase(attr)} on {where}" if "hook" in attr else
                               f"the {_phrase(attr)} of {where}")
        for attr, (obj, ref) in self.global_dicts.items():
            if not _unchanged(getattr(self._torch, attr, None), obj, ref):
                out.append(f"a {_phrase(attr)} (on every module)")
        if getattr(self._torch, "_global_is_full_backward_hook", None) is not self.global_full_backward:
            out.append("a global full backward hook (on every module)")
        return out

    def restore(self) -> None:
        """Undo what :meth:`changed` reports: added hooks removed, removed ones put back; mode, class,
        parametrizations and attached tensors as captured (the weights' values: :class:`WeightsGuard`)."""
        for s in self.snapshots:
            m = s.module
            if type(m) is not s.cls:
                m.__class__ = s.cls
            m.training = s.training
            for key, value in s.own.items():
                if value is _MISSING:
                    vars(m).pop(key, None)
                else:
                    vars(m)[key] = value
            for attr, (obj, ref) in s.dicts.items():
                if not _unchanged(getattr(m, attr, None), obj, ref):
                    # the original dict object: hook handles and compiled guards keep pointing at it
                    obj.clear()
                    obj.update(ref)
                    vars(m)[attr] = obj
        for attr, (obj, ref) in self.global_dicts.items():
            if not _unchanged(getattr(self._torch, attr, None), obj, ref):
                obj.clear()
                obj.update(ref)
                setattr(self._torch, attr, obj)
        self._torch._global_is_full_backward_hook = self.global_full_backward
