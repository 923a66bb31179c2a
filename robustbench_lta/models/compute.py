"""Compute per image: multiply-accumulates (GMACs) of one forward pass, measured, not estimated.

Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (no new dependency), which counts
the FLOPs of matrix multiplications and convolutions (2 per multiply-accumulate); MACs are
FLOPs / 2. Elementwise work (BN, ReLU, softmax, pooling) is not counted, as in the usual
"GMACs" figures of papers. Why it matters here: the attention VGG keeps 32x32 and 16x16 maps that
the plain VGG-16 pools away, so at 32x32 it costs ~12x the MACs of ``vgg16``; any robustness gap
between them may come from resolution and compute rather than attention.

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
from torch.utils.flop_counter import FlopCounterMode

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
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        for m, flag in modes:
            m.training = flag
    return counter.get_total_flops() / 2e9


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
