"""A model as the engine runs it: eval mode, frozen weights, autocast when asked, work counted.

:class:`EngineModel` is what every plugin receives. It counts the images that go through a forward
pass and, through a hook on the logits, through a backward pass: exact work figures on a noisy
machine, with no hooks on the user's own modules.

Precision: attack forwards run under the sweep's autocast (``amp``, chosen by
:func:`robustbench_lta.devices.amp_dtype`: bf16 only where the hardware has it natively, fp16 on
older GPUs); every prediction that is counted (clean pass, adversarial batches) runs in float32
under :meth:`EngineModel.float32`. fp16 backward passes are loss-scaled (:class:`LossScale`) so
that small input gradients do not underflow to zero, which would weaken sign-based attacks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import devices
from .models import LoadedModel, StateGuard, WeightsGuard

#: fp16 loss scaling: each backward scales its largest output gradient to 2**8. A fixed scale cannot
#: fit every loss (a mean over the batch makes logit gradients ~1/B, a sum ~1); scaled to the gradient
#: actually seen, entries down to 2**-32 of the largest still reach the input (fp16 subnormals end at
#: 2**-24), with 2**7 of headroom below fp16's maximum (65504) for gradients that grow on the way back.
FP16_GRAD_PEAK_LOG2 = 8


class LossScale:
    """The scale of one forward's backward pass: set when the outputs' gradients arrive, read at the
    input. One object per forward, so concurrent graphs never share a scale."""

    def __init__(self) -> None:
        self.scale: torch.Tensor | float = 1.0


class _ScaleOutputs(torch.autograd.Function):
    """Identity forward; backward multiplies every output gradient by one power of two chosen from
    their peak (powers of two: the scaling and the unscaling at the input are exact)."""

    @staticmethod
    def forward(ctx: Any, holder: LossScale, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.holder = holder
        # copies, not views: a plugin may modify the logits in place, which a custom Function's views forbid
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        present = [g for g in grads if g is not None]
        if not present:
            return (None, *grads)
        peak = torch.stack([g.detach().abs().amax().float() for g in present]).amax()
        # no host sync: the scale stays a device tensor; a zero or non-finite peak leaves it at 1
        exponent = (FP16_GRAD_PEAK_LOG2 - torch.ceil(torch.log2(peak))).clamp(-100, 100)
        scale = torch.where(torch.isfinite(exponent), torch.exp2(exponent), torch.ones_like(peak))
        ctx.holder.scale = scale
        return (None, *[None if g is None else g * scale.to(g.dtype) for g in grads])


class _UnscaleInput(torch.autograd.Function):
    """Identity forward; backward divides the input gradient (float32, past the fp16 region) by the
    scale :class:`_ScaleOutputs` chose for this backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, holder: LossScale) -> torch.Tensor:
        ctx.holder = holder
        return x.clone()  # as above: the model may work on its input in place

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale = ctx.holder.scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(device=grad.device, dtype=grad.dtype)
        return grad / scale, None


def unscale_input(x: torch.Tensor, holder: LossScale) -> torch.Tensor:
    """``x`` as is; its gradient is divided by the scale chosen in :func:`scale_outputs`."""
    return _UnscaleInput.apply(x, holder)


def scale_outputs(holder: LossScale, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``outputs`` as they are; gradients flowing back into them are scaled (see :class:`LossScale`)."""
    return tuple(_ScaleOutputs.apply(holder, *outputs))


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, list):
        return [_to_float(o) for o in out]
    return out


def _scale_all(holder: LossScale, logits: torch.Tensor, rest: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    """:func:`scale_outputs` over the logits and every tensor among the other outputs (one level of
    lists: attention maps), in one autograd node so one scale serves the whole backward pass."""
    flat = [t for o in rest for t in (o if isinstance(o, list) else [o]) if isinstance(t, torch.Tensor)]
    it = iter(scale_outputs(holder, logits, *flat))
    logits = next(it)

    def put(o: Any) -> Any:
        return next(it) if isinstance(o, torch.Tensor) else o

    return logits, [[put(t) for t in o] if isinstance(o, list) else put(o) for o in rest]


class EngineModel(nn.Module):
    """Wraps a model: float32 logits (autocast inside when asked) and work counters."""

    def __init__(self, inner: nn.Module, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.amp_dtype = amp_dtype
        self.forward_images = 0
        self.backward_images = 0
        self._precise = False

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.inner, "has_attention", False))

    @contextlib.contextmanager
    def float32(self) -> Iterator[EngineModel]:
        """Forwards inside run in float32 whatever ``amp`` says: counted predictions must not depend
        on the precision the attack ran in."""
        before, self._precise = self._precise, True
        try:
            yield self
        finally:
            self._precise = before

    def _ctx(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        if self._precise:
            return torch.autocast(device_type=device_type, enabled=False)
        # autocast of the device the batch is on (a hard-coded "cuda" is silently off on CPU)
        return torch.autocast(device_type=device_type, dtype=self.amp_dtype)

    def _count_backward(self, n: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self.backward_images += n
        return hook

    def forward(self, x: torch.Tensor, **kw: Any) -> Any:
        n = int(x.shape[0])
        self.forward_images += n
        scaled = (self.amp_dtype == torch.float16 and not self._precise and torch.is_grad_enabled()
                  and x.requires_grad)
        holder = LossScale() if scaled else None
        if holder is not None:
            x = unscale_input(x, holder)
        with self._ctx(x.device.type):
            out = self.inner(x, **kw)
        if isinstance(out, tuple):
            logits, rest = out[0].float(), [_to_float(o) for o in out[1:]]
            if holder is not None:  # the maps too: an attack may take gradients through them
                logits, rest = _scale_all(holder, logits, rest)
            out = (logits, *rest)
        else:
            logits = out.float()
            if holder is not None:
                (logits,) = scale_outputs(holder, logits)
            out = logits
        if logits.requires_grad:
            logits.register_hook(self._count_backward(n))
        return out

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, maps = self(x, return_attention=True)
        return logits, list(maps)

    def work(self) -> tuple[int, int]:
        return self.forward_images, self.backward_images


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The sweep's autocast dtype: :func:`robustbench_lta.devices.amp_dtype` (bf16 only where native
    for ``auto``, fp16 CUDA-only), argument order kept for existing callers."""
    return devices.amp_dtype(amp, device)


_AMP_KEYS = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_key(device: torch.device, amp: str) -> str:
    """The precision the attacks will really run in on ``device``, as a cell key names it.

    ``auto`` keys as what it resolves to (``off`` on a CPU where bf16 is not faster, ``bf16`` where it
    is): a sweep resumed on another machine must not count float32 and bf16 units as one cell.
    """
    return _AMP_KEYS[amp_dtype(device, amp)]


# ------------------------------------------------------------------------------- torch.compile
def _compile_applies(device: torch.device) -> bool:
    """torch.compile only on CUDA: on CPU its kernels need a C compiler and rarely pay off."""
    return device.type == "cuda"


class _CompiledOrEager(nn.Module):
    """The compiled module until it fails once, then the eager one (with one warning).

    Compile errors surface on a call, not at ``torch.compile`` (a missing C compiler, an
    unsupported op, a guard failure on a later shape or keyword): a sweep must not die of them.
    Out-of-memory is not a compile failure: it is raised for the batch-halving back-off.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.eager = module
        # dynamic: batch sizes vary (last batch, survivors, OOM halves); static shapes would
        # recompile per size and soon hit Dynamo's recompile limit
        self.compiled = torch.compile(module, dynamic=True)
        self.failed = False

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.eager, "has_attention", False))

    def forward(self, x: torch.Tensor, **kw: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(x, **kw)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first}): running the model "
                              "eagerly for the rest of this sweep", RuntimeWarning, stacklevel=2)
                self.failed = True
        return self.eager(x, **kw)


@dataclass
class PreparedModel:
    """One model ready to attack in this process: shared by every unit of that model here."""

    loaded: LoadedModel
    model: EngineModel
    guard: WeightsGuard
    device: torch.device
    num_classes: int
    state: StateGuard | None = None  # hooks, mode, structure: checked after every unit

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
    if compile_model and _compile_applies(device):
        runnable = _CompiledOrEager(module)
    model = EngineModel(runnable, amp_dtype(device, amp)).eval()
    # the probe is the compiled module's first call: a compile failure falls back to eager here
    with torch.inference_mode(), model.float32():
        width = int(model(torch.zeros(probe_shape, device=device)).shape[1])
    model.forward_images = 0
    # captured after the probe: whatever a first call sets up (compile) belongs to the reference
    return PreparedModel(lm, model, guard, device, width, StateGuard(model))
