"""Device identity, data placement and mixed-precision choice: one place for the rules.

Why this module exists: ``torch.device("cuda:0") == torch.device("cuda")`` is False, a tensor moved
to ``"cuda"`` reports ``cuda:0``, and ``Tensor.pin_memory()`` raises on a tensor that already lives on
the GPU. Every comparison of "is this tensor where it should be?" goes through :func:`same_device`,
every host-to-device copy through :func:`to_device`, and every autocast choice through
:func:`amp_dtype`, so the CUDA branches are tested on CPU with fake indexed devices (see
tests/test_devices.py) instead of on the one GPU run a release gets.

Below every other layer (like utils): anything may import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

#: Accelerator types whose tensors carry an index (``cuda:0``); the bare name means the current one.
_INDEXED_TYPES = ("cuda", "xpu", "mps")


def canonical(device: torch.device | str, current_index: Callable[[str], int] | None = None) -> torch.device:
    """``device`` with its index filled in: ``cuda`` -> ``cuda:<current device>``; CPU and meta as is.

    ``current_index(type)`` gives the current index of an indexed type (default: torch's current
    CUDA device, 0 when CUDA is absent); tests pass a fake one.
    """
    dev = torch.device(device)
    if dev.type in _INDEXED_TYPES and dev.index is None:
        index = (current_index or _current_index)(dev.type)
        return torch.device(dev.type, index)
    return dev


def _current_index(device_type: str) -> int:
    if device_type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.current_device())
    return 0


def same_device(
    a: torch.device | str, b: torch.device | str, current_index: Callable[[str], int] | None = None
) -> bool:
    """True when ``a`` and ``b`` name the same device (``cuda`` and ``cuda:0`` do, on device 0)."""
    return canonical(a, current_index) == canonical(b, current_index)


def needs_pinned_copy(tensor_device: torch.device | str, target: torch.device | str) -> bool:
    """A host tensor bound for an accelerator: pin it, then copy without blocking.

    Never true for a tensor already on an accelerator (``pin_memory`` raises there) nor for a CPU
    target (pinning buys nothing).
    """
    src, dst = torch.device(tensor_device), torch.device(target)
    return src.type == "cpu" and dst.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``: no copy when already there, pinned and asynchronous from the host."""
    if same_device(tensor.device, device):
        return tensor
    if needs_pinned_copy(tensor.device, device):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def module_device(module: torch.nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """Where ``module``'s first parameter (else buffer) lives; ``default`` for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device(default)


# ------------------------------------------------------------------------------- mixed precision
def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """The processor computes bf16 in hardware (AMX or AVX512-BF16), so bf16 autocast is a speed-up.

    Reads /proc/cpuinfo's flags on Linux (``cpuinfo`` is the text, for tests); elsewhere False.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cuda_has_native_bf16(capability: tuple[int, int] | None = None) -> bool:
    """Ampere (compute capability 8.0) and newer; ``torch.cuda.is_bf16_supported()`` also counts
    emulation on older GPUs, where bf16 is slower than float32."""
    if capability is None:
        if not torch.cuda.is_available():
            return False
        capability = torch.cuda.get_device_capability()
    return capability[0] >= 8


#: ``auto`` takes bf16 on a CPU only when a measured step is at least this much faster than float32
CPU_BF16_MIN_SPEEDUP = 1.15
_SPEEDUP_ROUNDS = 5


@functools.lru_cache(maxsize=8)
def cpu_bf16_speedup(threads: int | None = None) -> float:
    """float32 time / bf16-autocast time of a small conv block's training step, measured on this CPU.

    Why measure: the flags do not predict it. ``vgg16_att3_concat_pc`` width 0.25 trains 2.45x faster
    in bf16 on an Intel CPU with AMX and 1.75x on AMD Zen 4 (AVX512-BF16), but 0.8x (slower) on an
    Intel CPU that reports AVX512-BF16 without AMX (docs/training.md). Under a second, once per process
    and thread count (``threads`` is only the cache key: torch's current setting is what runs).
    """
    import time

    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                              nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        block = block.to(memory_format=torch.channels_last)
        x = torch.rand(32, 32, 16, 16).contiguous(memory_format=torch.channels_last)

    def step_seconds(dtype: torch.dtype | None, steps: int = 2) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = block(x).float().sum()
            out.backward()
        return time.perf_counter() - t0

    # the two precisions interleaved, the fastest round of each kept: another job on the machine only
    # adds time, so a burst of it cannot land on one precision alone (measured back to back, a loaded
    # machine once read 10.3x here and picked bf16 on a CPU where it runs at 0.8-1x)
    step_seconds(None)
    step_seconds(torch.bfloat16)  # warm-up: oneDNN builds its kernels on first use
    f32, bf16 = [], []
    for _ in range(_SPEEDUP_ROUNDS):
        f32.append(step_seconds(None))
        bf16.append(step_seconds(torch.bfloat16))
    return min(f32) / min(bf16)


def native_bf16(device: torch.device | str) -> bool:
    """bf16 pays off here: CUDA Ampere+; a CPU with bf16 instructions where bf16 is measured faster."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return cuda_has_native_bf16()
    if dev.type == "cpu":
        return cpu_has_native_bf16() and cpu_bf16_speedup(torch.get_num_threads()) >= CPU_BF16_MIN_SPEEDUP
    return False


def amp_dtype(
    amp: str, device: torch.device | str, *, native: bool | None = None
) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (``off``/``auto``/``bf16``/``fp16``) on ``device``, or None.

    - ``auto``: bf16 where the hardware has it natively (CUDA >= Ampere; a CPU with AMX/AVX512-BF16 on
      which a bf16 step is measured faster, :func:`cpu_bf16_speedup`), fp16 on older CUDA GPUs,
      float32 (None) elsewhere.
    - ``bf16``: bf16 on CUDA and CPU (asked for explicitly, even where emulated).
    - ``fp16``: CUDA only (CPU fp16 autocast is slow and unsupported by many kernels) -> None on CPU.
    ``native`` overrides the hardware probe (tests).
    """
    dev = torch.device(device)
    if amp == "off" or dev.type not in ("cuda", "cpu"):
        return None
    has_bf16 = native_bf16(dev) if native is None else native
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16 if dev.type == "cuda" else None
    if amp == "auto":
        if has_bf16:
            return torch.bfloat16
        return torch.float16 if dev.type == "cuda" else None
    raise ValueError(f"unknown amp setting {amp!r}: use off, auto, bf16 or fp16")


_PRECISION_NAMES = {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


def precision_name(dtype: torch.dtype | None) -> str:
    """How a card or a log line names the precision: ``float32``, ``bf16 autocast``, ``fp16 autocast``."""
    return _PRECISION_NAMES[dtype]


def precision_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype a :func:`precision_name` names (None: float32)."""
    for dtype, known in _PRECISION_NAMES.items():
        if known == name:
            return dtype
    raise ValueError(f"unknown precision {name!r}: one of {', '.join(_PRECISION_NAMES.values())}")


def amp_note(amp: str, device: torch.device | str, kept: str | None = None) -> str:
    """Why ``amp`` ran as it did on ``device``, for the card: e.g. ``auto: float32 (bf16 measured 0.74x
    float32 on this CPU)``; ``kept``: the precision a resumed run kept from its first sitting."""
    dev = torch.device(device)
    if kept is not None:
        return f"{amp}: {kept} (decided when the run started; a resumed run keeps its precision)"
    chosen = precision_name(amp_dtype(amp, dev))
    if amp == "auto" and dev.type == "cpu" and cpu_has_native_bf16():
        speedup = cpu_bf16_speedup(torch.get_num_threads())
        return f"auto: {chosen} (bf16 step measured {speedup:.2f}x float32 on this CPU)"
    return f"{amp}: {chosen}"
