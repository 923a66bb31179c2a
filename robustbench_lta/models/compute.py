"""Compute per image: multiply-accumulates (GMACs) of one forward pass, measured, not estimated.

Counted by :class:`_MacCounter`, a ``TorchFunctionMode`` that sees every convolution, linear layer
and matrix product called during one forward and adds its multiply-accumulates from the shapes.
Not ``torch.utils.flop_counter.FlopCounterMode``: any dispatch mode imports ``torch._dynamo`` on
first use, 1.1-1.6 s of every sweep's start-up on this machine for one number; a test holds the
two counters equal on every registered model. Elementwise work (BN, ReLU, softmax, pooling) is
not counted, as in the usual "GMACs" figures of papers. Why it matters here: the attention VGG
keeps 32x32 and 16x16 maps that the plain VGG-16 pools away, so at 32x32 it costs ~12x the MACs
of ``vgg16``; any robustness gap between them may come from resolution and compute rather than
attention.

Two entry points:

* :func:`model_gmacs` measures a module you hold (a checkpoint's model, the engine's model);
* :func:`registry_gmacs` measures a registered name on the ``meta`` device (no weights allocated,
  ~0.1 s per model) and caches the figure per (name, width, classes, input size, code version) in
  memory and in ``$XDG_CACHE_HOME/robustbench-lta/gmacs.json``, so ``robustbench-lta models`` stays
  fast. The code version is a hash of the model sources, so editing an architecture invalidates its
  cached figures instead of showing stale ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["DEFAULT_INPUT_SIZE", "model_gmacs", "registry_gmacs"]

#: (C, H, W) used when nothing else is known: the CIFAR / cluttered-digits size of this project.
DEFAULT_INPUT_SIZE: tuple[int, int, int] = (3, 32, 32)

_MEMO: dict[str, float] = {}
_CODE_VERSION: str | None = None


def _input_size(module: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    if input_size is None:
        c = int(getattr(module, "in_channels", DEFAULT_INPUT_SIZE[0]))
        return (c, *DEFAULT_INPUT_SIZE[1:])
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:  # (H, W): channels from the model
        size = (int(getattr(module, "in_channels", 3)), *size)
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive ints, got {input_size!r}")
    return size  # type: ignore[return-value]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def _conv_macs(args: tuple, kwargs: dict, out: torch.Tensor, transposed: bool) -> int:
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    if transposed:  # every input position scatters into (C_out/groups x taps) outputs
        return _numel(x.shape) * _numel(w.shape[1:])
    return _numel(out.shape) * _numel(w.shape[1:])  # each output: (C_in/groups x taps) products


def _matmul_macs(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> int:
    inner = int(a.shape[-1]) if a.dim() else 1
    return _numel(out.shape) * inner


def _einsum_macs(args: tuple, out: torch.Tensor) -> int:
    spec, ops = args[0], args[1:]
    if len(ops) == 1 and isinstance(ops[0], list | tuple):
        ops = tuple(ops[0])
    if len(ops) < 2 or "..." in spec:
        return 0  # reductions and ellipses: elementwise-like, not counted
    sizes: dict[str, int] = {}
    for sub, t in zip(spec.split("->")[0].split(","), ops, strict=False):
        for ch, n in zip(sub.strip(), t.shape, strict=False):
            sizes[ch] = int(n)
    return _numel(sizes.values())


class _MacCounter(TorchFunctionMode):
    """Adds multiply-accumulates of convolutions, linear layers and matrix products, from shapes."""

    _CONV = {F.conv1d: False, F.conv2d: False, F.conv3d: False,
             F.conv_transpose1d: True, F.conv_transpose2d: True, F.conv_transpose3d: True}
    _MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
               torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm}

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self._CONV:
            self.macs += _conv_macs(args, kwargs, out, self._CONV[func])
        elif func is F.linear:
            self.macs += _numel(out.shape) * int(args[0].shape[-1])
        elif func in self._MATMUL:
            a, b = (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else (args[0], args[1])
            self.macs += _matmul_macs(a, b, out)
        elif func in (torch.addmm, torch.baddbmm):
            self.macs += _matmul_macs(args[1], args[2], out)
        elif func is torch.einsum:
            self.macs += _einsum_macs(args, out)
        elif func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]  # QK^T then weights x V: 2 x (L x S x E) per head
            self.macs += 2 * _numel(q.shape) * int(k.shape[-2])
        return out


def model_gmacs(module: nn.Module, input_size: Sequence[int] | None = None) -> float:
    """GMACs of one forward pass of ``module`` on one image of ``input_size`` ((C,H,W) or (H,W)).

    Runs one forward on a zero image (on the ``meta`` device when the module lives there) under
    ``torch.no_grad`` with every submodule in eval mode, then restores each submodule's train/eval
    flag, so batch-norm statistics and the caller's mode are untouched. ``input_size`` defaults to
    the model's channels at 32x32.
    """
    size = _input_size(module, input_size)
    ref = next(iter(module.parameters()), None)
    if ref is None:
        ref = next(iter(module.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        x = torch.zeros((1, *size), device=device)
        with torch.no_grad(), _MacCounter() as counter:
            module(x)
    finally:
        for m, flag in modes:
            m.training = flag
    return counter.macs / 1e9


def _code_version() -> str:
    """Hash of this package's model sources: cached figures of edited architectures are not reused."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        h = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "robustbench-lta" / "gmacs.json"


def _read_cache() -> dict[str, float]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def _write_cache(entries: dict[str, float]) -> None:
    path = _cache_file()
    try:  # best effort: a read-only home only costs the next run the measurement
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), **entries}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def registry_gmacs(
    name: str,
    width: float = 1.0,
    input_size: Sequence[int] | None = None,
    num_classes: int = 10,
    kwargs: dict[str, Any] | None = None,
    *,
    disk_cache: bool = True,
) -> float:
    """GMACs per image of the registered model ``name`` (built on the meta device), cached.

    Keyword ``kwargs`` go to the builder (normalisation statistics do not change compute and are
    left out of the cache key). Unknown names raise the registry's UserError.
    """
    from .registry import create_model

    extra = {k: v for k, v in (kwargs or {}).items() if k not in ("mean", "std", "num_classes", "width")}
    size = tuple(int(v) for v in input_size) if input_size is not None else None
    key = json.dumps([name, float(width), int(num_classes), size, extra, _code_version()], sort_keys=True,
                     default=str)
    if key in _MEMO:
        return _MEMO[key]
    if disk_cache:
        cached = _read_cache().get(key)
        if cached is not None:
            _MEMO[key] = cached
            return cached
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, width=width, **(kwargs or {}))
    value = model_gmacs(model, size)
    _MEMO[key] = value
    if disk_cache:
        _write_cache({key: value})
    return value
