"""A model as the engine runs it: eval mode, frozen weights, autocast on CUDA, work counted.

:class:`EngineModel` is what every plugin receives. It counts the images that go through a forward
pass and, through a hook on the logits, through a backward pass: exact work figures on a noisy
machine, with no hooks on the user's own modules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .models import LoadedModel, WeightsGuard


class EngineModel(nn.Module):
    """Wraps a model: float32 logits (autocast inside on CUDA when asked) and work counters."""

    def __init__(self, inner: nn.Module, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.amp_dtype = amp_dtype
        self.forward_images = 0
        self.backward_images = 0

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.inner, "has_attention", False))

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _count_backward(self, n: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self.backward_images += n
        return hook

    def forward(self, x: torch.Tensor, **kw: Any) -> Any:
        n = int(x.shape[0])
        self.forward_images += n
        with self._ctx():
            out = self.inner(x, **kw)
        if isinstance(out, tuple):
            logits = out[0].float()
            out = (logits, *[o.float() if isinstance(o, torch.Tensor) else
                             [m.float() for m in o] if isinstance(o, list) else o for o in out[1:]])
        else:
            logits = out = out.float()
        if logits.requires_grad:
            logits.register_hook(self._count_backward(n))
        return out

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, maps = self(x, return_attention=True)
        return logits, list(maps)

    def work(self) -> tuple[int, int]:
        return self.forward_images, self.backward_images


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    bf16 = torch.cuda.is_bf16_supported()
    return torch.float16 if amp == "fp16" or (amp == "auto" and not bf16) else torch.bfloat16


@dataclass
class PreparedModel:
    """One model ready to attack in this process: shared by every unit of that model here."""

    loaded: LoadedModel
    model: EngineModel
    guard: WeightsGuard
    device: torch.device
    num_classes: int

    @property
    def label(self) -> str:
        return self.loaded.label

    @property
    def has_attention(self) -> bool:
        return self.loaded.has_attention


def prepare_model(lm: LoadedModel, device: torch.device, *, amp: str, channels_last: bool,
                  compile_model: bool, probe_shape: tuple[int, ...]) -> PreparedModel:
    """Move to the device, eval mode, weights frozen, NHWC weights if asked; measure the output width."""
    module = lm.module.to(device).eval()
    for p in module.parameters():  # attacks need input gradients only: skip weight gradients
        p.requires_grad_(False)
    if channels_last:  # NHWC convolutions are faster on CPU (oneDNN) and CUDA alike
        module = module.to(memory_format=torch.channels_last)
    guard = WeightsGuard(module)
    runnable: nn.Module = module
    if device.type == "cuda" and compile_model:
        runnable = torch.compile(module)
    model = EngineModel(runnable, amp_dtype(device, amp)).eval()
    with torch.inference_mode():
        width = int(model(torch.zeros(probe_shape, device=device)).shape[1])
    model.forward_images = 0
    return PreparedModel(lm, model, guard, device, width)
