"""One training run's machinery: the model, optimizer, schedule and precision, and one epoch of steps.

:func:`setup_run` builds a :class:`Run` (model on the device, SGD, the learning-rate schedule, autocast
and grad scaler, the seeded generator, DDP sizes, the adversarial loss when the config has a threat
model); :func:`train_epoch` runs one pass over the training split. Selection, checkpoints and the
final test measurement are the trainer's (trainer.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.registry import ImageDataset
from ..devices import amp_dtype, precision_dtype
from ..errors import UserError
from ..models.registry import create_model
from ..utils import derive_seed
from . import distributed
from .adversarial import AdversarialLoss
from .batches import DeviceBatches, augment, to_float


def build_model(config: TrainConfig, dataset: ImageDataset) -> nn.Module:
    """``create_model`` with the dataset's class count and normalisation (config kwargs win)."""
    kwargs: dict[str, Any] = {"mean": tuple(dataset.mean), "std": tuple(dataset.std), **config.model.kwargs}
    return create_model(
        config.model.name, num_classes=dataset.num_classes, width=config.model.width, **kwargs
    )


def lr_lambda(steps_per_epoch: int, config: TrainConfig) -> Any:
    total = config.epochs * steps_per_epoch
    warm = config.warmup_epochs * steps_per_epoch

    def onecycle(step: int) -> float:  # 0 -> lr at 2/5 of the run -> 0 (Wong et al. 2020)
        peak = max(1, (2 * total) // 5)
        if step < peak:
            return (step + 1) / peak
        return max(0.0, (total - step) / max(1, total - peak))

    def factor(step: int) -> float:
        if config.lr_schedule == "onecycle":
            return onecycle(step)
        epoch = step // steps_per_epoch
        value = config.lr_gamma ** (epoch // config.lr_step_epochs)
        if step < warm:
            value *= (step + 1) / warm
        return value

    return factor


@dataclass
class Run:
    """Everything one training run holds between epochs (built once by :func:`_setup`)."""

    config: TrainConfig
    device: torch.device
    out_dir: Path
    model: nn.Module
    step_model: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    channels_last: bool
    n: int  # images per epoch (this rank's share under DDP)
    batch_size: int
    steps_per_epoch: int
    ddp: distributed.DistContext | None
    adversarial: AdversarialLoss | None
    progress: bool
    kept_precision: str | None = None  # `amp: auto` on resume: the first sitting's decision, kept

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def is_main(self) -> bool:
        return self.ddp is None or self.ddp.is_main


def setup_run(config: TrainConfig, progress: bool, device: torch.device, out_dir: Path,
           train_ds: ImageDataset, kept_precision: str | None = None) -> Run:
    """``kept_precision``: what a resumed run's earlier epochs ran in (its trainer state)."""
    model = build_model(config, train_ds)
    # NHWC convolutions: faster with oneDNN on CPU (bf16 above all) and with cuDNN on CUDA
    channels_last = config.channels_last and device.type in ("cuda", "cpu")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    check_input_size(model, config, train_ds, device)
    n, bs = len(train_ds), min(config.batch_size, len(train_ds))
    ddp = distributed.current()
    if ddp is not None:  # this rank's share of each epoch and each batch; rank 0 alone logs
        n, bs = ddp.local_sizes(n, bs)
        progress = progress and ddp.is_main
    steps_per_epoch = math.ceil(n / bs) - (1 if n % bs == 1 and n > 1 else 0)  # no batch of one (BatchNorm)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch, config))
    dtype = training_amp_dtype(config, device, kept_precision)
    adv = config.adversarial
    return Run(
        config=config, device=device, out_dir=out_dir, model=model, step_model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        generator=torch.Generator().manual_seed(derive_seed(config.seed, "train-batches")),
        amp_dtype=dtype, channels_last=channels_last, n=n, batch_size=bs, steps_per_epoch=steps_per_epoch,
        ddp=ddp, progress=progress,
        adversarial=AdversarialLoss(adv, config.label_smoothing, dtype) if adv.enabled else None,
        kept_precision=kept_precision if config.amp == "auto" else None,
    )


def training_amp_dtype(config: TrainConfig, device: torch.device,
                       kept_precision: str | None = None) -> torch.dtype | None:
    # bf16 for `auto` only where it is native (CUDA Ampere+, AMX/AVX512-BF16 CPUs): emulated bf16 is
    # slower than float32, and is_bf16_supported() also counts emulation
    if config.amp == "auto" and kept_precision is not None:
        # `auto` decides once per run: a resumed run re-measuring on a busier machine could switch
        # precision between epochs (it did: float32 epochs 1-2, bf16 3-8)
        return precision_dtype(kept_precision)
    dtype = amp_dtype(config.amp, device)
    if config.amp == "fp16" and dtype is None:
        import warnings

        warnings.warn(f"amp=fp16 is for CUDA; training on {device} in float32 (bf16 is the CPU option)",
                      stacklevel=3)
    return dtype


def train_epoch(run: Run, epoch: int, train_data: DeviceBatches) -> dict[str, Any]:
    """One pass over the training split: loss, accuracy, rate (summed over ranks under DDP)."""
    from tqdm.auto import tqdm

    config, device = run.config, run.device
    run.model.train()
    if run.ddp is None:
        perm = torch.randperm(run.n, generator=run.generator)
    else:  # one shuffle shared by the ranks, split by rank; per-rank augmentation seeds
        perm = run.ddp.epoch_indices(len(train_data), epoch, config.seed, run.generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, bs, lr_used = 0, run.batch_size, config.lr
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", leave=False,
               disable=not run.progress, file=sys.stderr, dynamic_ncols=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        for step in range(run.steps_per_epoch):
            index = perm[step * bs: (step + 1) * bs if step < run.steps_per_epoch - 1 else run.n]
            x, y = train_data.get(index)
            x = to_float(augment(x, run.generator, config.augment.crop_padding, config.augment.flip),
                         run.channels_last)
            if run.adversarial is not None:
                loss, logits = run.adversarial(run.step_model, x, y, run.generator, run.autocast())
            else:
                with run.autocast():
                    logits = run.step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                loss.backward()
                run.optimizer.step()
            lr_used = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            loss_sum += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += int(y.shape[0])
            bar.update(1)
            if run.progress and (step % 10 == 9 or step == run.steps_per_epoch - 1):
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                img_s=f"{rate:.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if run.ddp is not None:
        loss_sum, correct, seen = run.ddp.sum_over_ranks(loss_sum, correct, seen)
    train_loss = float(loss_sum) / seen
    if not math.isfinite(train_loss):
        raise UserError(
            f"training diverged (loss {train_loss} in epoch {epoch}): lower lr or add warmup_epochs; "
            f"{run.out_dir / 'last.safetensors'} holds the previous epoch"
        )
    return {"epoch": epoch, "lr": lr_used, "train_loss": round(train_loss, 6),
            "train_acc": round(int(correct) / seen, 6), "images_per_s": round(seen / seconds, 1),
            "t0": t0, "cpu0": cpu0}


def check_input_size(
    model: nn.Module, config: TrainConfig, dataset: ImageDataset, device: torch.device
) -> None:
    """One forward of two images in eval mode, so a size mismatch is a clear error, not a traceback."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = dataset.images[:2].to(device).float().div_(255.0)
            out = model(x)
    except RuntimeError as exc:
        h, w = dataset.image_size
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"model {config.model.name!r} cannot take the {h}x{w} images of {config.data.name!r} ({msg})"
        ) from None
    finally:
        model.train(was_training)
    if out.shape[-1] != dataset.num_classes:
        raise UserError(
            f"model {config.model.name!r} gives {out.shape[-1]} outputs for {dataset.num_classes} classes"
        )
