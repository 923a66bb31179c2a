"""Train a registered model on a registered dataset: the paper's SGD recipe, resumable, no pickle.

The whole split lives in memory as uint8 (``ImageDataset.images``); batches are gathered, augmented
(random crop with zero padding, optional horizontal flip) and converted to float on the training
device with batched tensor ops, so there are no DataLoader workers (``num_workers`` is unused).
All randomness of training (shuffling, augmentation) comes from one seeded ``torch.Generator``;
model initialisation and any dropout use torch's global generator, seeded inside a ``fork_rng``
block so the caller's random state is left as it was. On CPU the same config gives the same
weights, and an interrupted run resumed from ``last`` gives the same weights as an uninterrupted one.

Out folder (``config.out`` or ``runs/<model name>``)::

    best.safetensors + best.json        weights + card of the epoch with the best validation accuracy
    last.safetensors + last.json        weights + card after the latest finished epoch
    trainer_state.safetensors + .json   optimizer momentum, RNG states (tensors) + scalar state (JSON)
    history.csv                         epoch, lr, train_loss, train_acc, val_acc, images_per_s, seconds

Model selection never sees the test split: ``val_fraction`` (default 10 %) of the training images
is held out, seeded and stratified (training/selection.py), ``best`` is chosen by accuracy on it,
and the test split is measured once, for the chosen epoch, when training finishes. The card's
``selection`` section records the rule, the split and its size. ``val_fraction: 0`` holds nothing
out: ``best`` is then the last epoch.

Running again with the same out folder resumes after the last finished epoch (raise ``epochs`` to
train longer). Ctrl-C stops training; ``last`` always holds a complete, loadable epoch.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig, apply_threads
from ..data.registry import ImageDataset, load_dataset
from ..devices import amp_dtype, needs_pinned_copy, same_device, to_device
from ..discovery import load_plugins
from ..errors import UserError
from ..models.registry import create_model, model_info
from ..utils import atomic_write_json, atomic_write_text, derive_seed, device_description, resolve_device
from . import distributed
from .checkpoint import (
    defer_keyboard_interrupt,
    load_tensors,
    save_checkpoint,
    save_tensors_atomic,
    sha256_file,
    state_dict_for_saving,
)
from .selection import checkpoint_card as _card
from .selection import hold_out_validation

STATE_NAME = "trainer_state"
STATE_FORMAT_VERSION = 1
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "images_per_s", "seconds")
#: Config keys that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "device",
        "amp",
        "channels_last",
        "num_workers",
        "eval_every",
        "out",
        "data.root",
        "data.download",
        "threads",
        "plugins",
    }
)
#: Keep a whole split on the GPU when it is smaller than this (else gather batches on the CPU).
DEVICE_DATA_LIMIT_BYTES = 4 << 30


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out_dir: Path
    best_path: Path
    last_path: Path
    best_acc: float  # validation accuracy of the chosen epoch (NaN without a validation split)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    final_acc: float = float("nan")  # validation accuracy of the last epoch
    resumed_from: int = 0
    test_acc: float = float("nan")  # test accuracy of the chosen epoch, measured once
    selection: dict[str, Any] = field(default_factory=dict)  # the card's selection section


# ------------------------------------------------------------------------------------------- pieces
def out_dir_for(config: TrainConfig) -> Path:
    """``config.out``, else ``runs/<model name>``."""
    return Path(config.out).expanduser() if config.out else Path("runs") / config.model.name


def load_splits(config: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits named by ``config.data`` (first ``n_train`` / ``n_test`` images)."""
    spec = config.data
    common = {"root": spec.root, "download": spec.download, **spec.kwargs}
    train_ds = load_dataset(spec.name, split="train", n=spec.n_train, **common)
    test_ds = load_dataset(spec.name, split="test", n=spec.n_test, **common)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise UserError(
            f"dataset {spec.name!r} has an empty train or test split: check data.name and its files"
        )
    if list(train_ds.classes) != list(test_ds.classes):
        raise UserError(f"dataset {spec.name!r}: train and test splits have different classes")
    if train_ds.image_size != test_ds.image_size:
        raise UserError(f"dataset {spec.name!r}: train and test images differ in size")
    return train_ds, test_ds


def build_model(config: TrainConfig, dataset: ImageDataset) -> nn.Module:
    """``create_model`` with the dataset's class count and normalisation (config kwargs win)."""
    kwargs: dict[str, Any] = {"mean": tuple(dataset.mean), "std": tuple(dataset.std), **config.model.kwargs}
    return create_model(
        config.model.name, num_classes=dataset.num_classes, width=config.model.width, **kwargs
    )


def augment(images: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Random crop (zero padding ``padding``, per-image offsets) and random horizontal flip.

    Works on a batch ``(N,C,H,W)`` of any dtype on any device with a few gathers; the random draws
    come from ``generator`` (CPU) so a seed gives the same augmentation on every device.
    """
    n, c, h, w = images.shape
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (N,H)
        cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (N,W)
        padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
        images = padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if flip:
        mask = torch.randint(0, 2, (n,), generator=generator).bool().to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if config.amp in ("bf16", "fp16"):
            warnings.warn(f"amp={config.amp} is for CUDA; training on {device} in float32", stacklevel=3)
        return None
    # bf16 for `auto` only where it is native (Ampere+): is_bf16_supported() also counts emulation
    return amp_dtype(config.amp, device)


def _lr_lambda(steps_per_epoch: int, config: TrainConfig) -> Any:
    warm = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        value = config.lr_gamma ** (epoch // config.lr_step_epochs)
        if step < warm:
            value *= (step + 1) / warm
        return value

    return factor


class _Batches:
    """uint8 images + labels on the device (or pinned on the host when too big), gathered per batch.

    Whether the split is resident on the device is decided once with ``devices.same_device``: a
    tensor moved to ``cuda`` reports ``cuda:0``, and ``torch.device("cuda:0") == torch.device("cuda")``
    is False, which once sent resident CUDA data down the pinned-host path (``pin_memory`` raises there).
    """

    def __init__(self, dataset: ImageDataset, device: torch.device) -> None:
        self.device = device
        images, labels = dataset.images, dataset.labels
        if device.type == "cuda":
            if images.numel() * images.element_size() <= DEVICE_DATA_LIMIT_BYTES:
                images, labels = to_device(images, device), to_device(labels, device)
            elif needs_pinned_copy(images.device, device):
                images, labels = images.pin_memory(), labels.pin_memory()
        self.images, self.labels = images, labels
        self.resident = same_device(images.device, device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            index = index.to(self.images.device, non_blocking=True)
            return self.images[index], self.labels[index]
        return to_device(self.images[index], self.device), to_device(self.labels[index], self.device)


def _to_float(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = x.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, data: _Batches, batch_size: int, channels_last: bool = False) -> float:
    """Top-1 accuracy in float32 and eval mode (the model is put back in its previous mode)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    try:
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            x, y = data.get(index)
            correct += (model(_to_float(x, channels_last)).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return int(correct) / max(len(data), 1)


# ------------------------------------------------------------------------------------ trainer state
def _flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def _check_same_run(saved: dict[str, Any], config: TrainConfig, out_dir: Path) -> None:
    old, new = _flatten_config(saved), _flatten_config(config.model_dump(mode="json"))
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
            raise UserError(
                f"{out_dir} holds a run with {key}={old.get(key)!r}, this config has {new.get(key)!r}: "
                "use another out folder, or delete it to start over"
            )


def _save_state(
    out_dir: Path,
    *,
    epoch: int,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
    device: torch.device,
    scalars: dict[str, Any],
) -> None:
    """Optimizer/RNG tensors as safetensors, everything else as JSON (written last: the commit mark)."""
    tensors: dict[str, torch.Tensor] = {
        "rng.generator": generator.get_state(),
        "rng.torch_cpu": torch.get_rng_state(),
    }
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    opt = optimizer.state_dict()
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                per_param.setdefault(str(pid), {})[name] = value
    sched = scheduler.state_dict()
    sched["lr_lambdas"] = [None] * len(sched.get("lr_lambdas", []))
    state = {
        "format_version": STATE_FORMAT_VERSION,
        "epoch": epoch,
        "config": config.model_dump(mode="json"),
        "weights_sha256": sha256_file(out_dir / "last.safetensors"),
        "optimizer": {"param_groups": opt["param_groups"], "scalars": per_param},
        "scheduler": sched,
        "scaler": scaler.state_dict() if scaler is not None else None,
        **scalars,
    }
    save_tensors_atomic(state_dict_for_saving(tensors), out_dir / f"{STATE_NAME}.safetensors")
    atomic_write_json(out_dir / f"{STATE_NAME}.json", state)


def _load_state(out_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    path = out_dir / f"{STATE_NAME}.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot resume: {path} is unreadable ({exc}); delete {out_dir} to start over"
        ) from None
    if state.get("format_version") != STATE_FORMAT_VERSION:
        raise UserError(f"cannot resume: {path} has an unknown format; delete {out_dir} to start over")
    weights = out_dir / "last.safetensors"
    if not weights.is_file() or sha256_file(weights) != state.get("weights_sha256"):
        raise UserError(
            f"cannot resume: {weights} does not belong to {path.name} (saving was cut off); "
            f"delete {out_dir} to start over"
        )
    return state, load_tensors(out_dir / f"{STATE_NAME}.safetensors")


def _write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_COLUMNS})
    atomic_write_text(out_dir / "history.csv", buf.getvalue())


# -------------------------------------------------------------------------------------------- train
def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write checkpoints to the out folder.

    Resumes automatically when the out folder holds a ``last`` checkpoint of the same run. Returns a
    :class:`TrainResult`; prints one summary line at the end.
    """
    load_plugins(config.plugins)  # the config's own plugin files (models, datasets) first
    if config.threads:  # None: leave the caller's torch setting alone (the CLI resolves it)
        apply_threads(config.threads)
    model_info(config.model.name)  # an unknown name fails here, before any data is loaded
    ddp = distributed.current()  # a torchrun process group: see distributed.py
    device = resolve_device(config.device) if ddp is None else ddp.device(config.device)
    out_dir = out_dir_for(config)
    saved = _load_state(out_dir)
    if saved is not None:
        _check_same_run(saved[0]["config"], config, out_dir)
    elif (out_dir / "last.json").exists() or (out_dir / "best.json").exists():
        raise UserError(
            f"{out_dir} holds checkpoints but no {STATE_NAME}.json to resume from: use another out folder"
        )

    train_ds, test_ds = load_splits(config)
    train_ds, val_ds, selection = hold_out_validation(train_ds, config)
    fork_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    benchmark_before = torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(config.seed)
            torch.backends.cudnn.benchmark = True
        try:
            return _train(config, progress, device, out_dir, saved, train_ds, test_ds, val_ds, selection)
        finally:
            torch.backends.cudnn.benchmark = benchmark_before


def _train(
    config: TrainConfig,
    progress: bool,
    device: torch.device,
    out_dir: Path,
    saved: tuple[dict[str, Any], dict[str, torch.Tensor]] | None,
    train_ds: ImageDataset,
    test_ds: ImageDataset,
    val_ds: ImageDataset | None,
    selection: dict[str, Any],
) -> TrainResult:
    model = build_model(config, train_ds)
    channels_last = config.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _check_input_size(model, config, train_ds, device)

    n = len(train_ds)
    bs = min(config.batch_size, n)
    ddp = distributed.current()
    if ddp is not None:  # this rank's share of each epoch and each batch; rank 0 alone logs
        n, bs = ddp.local_sizes(n, bs)
        progress = progress and ddp.is_main
    steps_per_epoch = math.ceil(n / bs) - (1 if n % bs == 1 and n > 1 else 0)  # no batch of one (BatchNorm)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=False,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps_per_epoch, config))
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "train-batches"))

    start_epoch, best_acc, best_epoch, history, last_acc = 0, -1.0, 0, [], float("nan")
    tested: dict[str, Any] = {}  # {"epoch": e, "acc": a, "times": k}: the one test measurement
    if saved is not None:
        state, tensors = saved
        start_epoch = int(state["epoch"])
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        history, last_acc = list(state["history"]), float(state["last_acc"])
        tested = dict(state.get("tested") or {})
        _restore(model, optimizer, scheduler, scaler, generator, device, out_dir, state, tensors)
        if progress:
            print(f"resuming {out_dir} after epoch {start_epoch}", file=sys.stderr)

    train_data, test_data = _Batches(train_ds, device), _Batches(test_ds, device)
    val_data = _Batches(val_ds, device) if val_ds is not None else None
    eval_bs = max(bs, 256)
    card_base = _card_base(config, train_ds, test_ds, device)
    card_base["dataset"]["n_val"] = 0 if val_ds is None else len(val_ds)
    pad, flip = config.augment.crop_padding, config.augment.flip
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    from tqdm.auto import tqdm

    if ddp is not None:
        ddp.agree("epoch to resume after", start_epoch, device)
    step_model = model if ddp is None else ddp.wrap(model, device)

    bar = None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            model.train()
            if ddp is None:
                perm = torch.randperm(n, generator=generator)
            else:  # one shuffle shared by the ranks, split by rank; per-rank augmentation seeds
                perm = ddp.epoch_indices(len(train_ds), epoch, config.seed, generator)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
                disable=not progress,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            t0 = time.perf_counter()
            for step in range(steps_per_epoch):
                index = perm[step * bs : (step + 1) * bs if step < steps_per_epoch - 1 else n]
                x, y = train_data.get(index)
                x = _to_float(augment(x, generator, pad, flip), channels_last)
                with autocast:
                    logits = step_model(x)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                lr_used = optimizer.param_groups[0]["lr"]
                scheduler.step()
                loss_sum += loss.detach().float() * y.shape[0]
                correct += (logits.detach().argmax(1) == y).sum()
                seen += int(y.shape[0])
                bar.update(1)
                if progress and (step % 10 == 9 or step == steps_per_epoch - 1):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / seen:.3f}",
                        acc=f"{int(correct) / seen:.3f}",
                        img_s=f"{rate:.0f}",
                    )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - t0
            bar.close()
            if ddp is not None:
                loss_sum, correct, seen = ddp.sum_over_ranks(loss_sum, correct, seen)
            train_loss = float(loss_sum) / seen
            if not math.isfinite(train_loss):
                raise UserError(
                    f"training diverged (loss {train_loss} in epoch {epoch}): lower lr or add warmup_epochs; "
                    f"{out_dir / 'last.safetensors'} holds the previous epoch"
                )
            if ddp is not None and not ddp.is_main:
                continue  # rank 0 evaluates and writes checkpoints, state and history
            val_acc = None
            if val_data is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                val_acc = last_acc = evaluate(model, val_data, eval_bs, channels_last)
            row = {
                "epoch": epoch,
                "lr": lr_used,
                "train_loss": round(train_loss, 6),
                "train_acc": round(int(correct) / seen, 6),
                "val_acc": None if val_acc is None else round(val_acc, 6),
                "images_per_s": round(seen / train_seconds, 1),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(row)
            # without a validation split nothing is selected: best follows the last epoch
            improved = val_data is None or (val_acc is not None and val_acc > best_acc)
            if improved:
                best_acc, best_epoch = (math.nan if val_acc is None else val_acc), epoch
            with defer_keyboard_interrupt():
                if improved:
                    save_checkpoint(model, out_dir / "best", _card(card_base, selection, epoch, val_acc))
                save_checkpoint(
                    model,
                    out_dir / "last",
                    _card(card_base, selection, epoch, None if math.isnan(last_acc) else last_acc, last=True),
                )
                _save_state(
                    out_dir,
                    epoch=epoch,
                    config=config,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    generator=generator,
                    device=device,
                    scalars={
                        "best_acc": best_acc,
                        "best_epoch": best_epoch,
                        "last_acc": last_acc,
                        "history": history,
                        "tested": tested,
                    },
                )
                _write_history(out_dir, history)
            if progress:
                shown = "-" if val_acc is None else f"{val_acc:.4f}"
                tqdm.write(
                    f"epoch {epoch}/{config.epochs}  lr {lr_used:.4g}  loss {train_loss:.4f}  "
                    f"train acc {row['train_acc']:.4f}  val acc {shown}  {row['images_per_s']:.0f} img/s",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(
            f"\ninterrupted in epoch {epoch}: {out_dir / 'last.safetensors'} holds epoch {epoch - 1}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        raise

    # under DDP only rank 0 holds the current selection and writes: the other ranks skipped the
    # per-epoch bookkeeping, so their best_epoch is the resumed one and testing there would race rank 0
    is_main = ddp is None or ddp.is_main
    if is_main and tested.get("epoch") != best_epoch and best_epoch > 0:
        tested = _test_chosen_epoch(model, test_data, eval_bs, channels_last, out_dir, tested, best_epoch)
        with defer_keyboard_interrupt():
            state = json.loads((out_dir / f"{STATE_NAME}.json").read_text())
            state["tested"] = tested
            atomic_write_json(out_dir / f"{STATE_NAME}.json", state)
    test_acc = float(tested.get("acc", math.nan))
    rates = [r["images_per_s"] for r in history if r.get("images_per_s")]
    ips = f", {sum(rates) / len(rates):.0f} img/s" if rates else ""
    done = "already trained" if start_epoch >= config.epochs else "trained"
    if ddp is not None:
        ddp.barrier()  # every rank returns once rank 0 has written the last checkpoint
    if ddp is None or ddp.is_main:
        chosen = (
            f"best val acc {best_acc:.4f} (epoch {best_epoch}, {selection['n']} held-out train images), "
            f"last val acc {last_acc:.4f}"
            if val_data is not None
            else f"no validation split: best = last epoch {best_epoch}"
        )
        print(
            f"{done} {config.model.name} on {config.data.name} for {len(history)} epoch(s): {chosen}; "
            f"test acc {test_acc:.4f} (measured once, chosen epoch){ips} -> {out_dir}"
        )
    return TrainResult(
        out_dir=out_dir,
        best_path=out_dir / "best.safetensors",
        last_path=out_dir / "last.safetensors",
        best_acc=best_acc,
        history=history,
        best_epoch=best_epoch,
        final_acc=last_acc,
        resumed_from=start_epoch,
        test_acc=test_acc,
        selection=json.loads((out_dir / "best.json").read_text()).get("selection", {}),
    )


def _test_chosen_epoch(
    model: nn.Module,
    test_data: _Batches,
    batch_size: int,
    channels_last: bool,
    out_dir: Path,
    tested: dict[str, Any],
    best_epoch: int,
) -> dict[str, Any]:
    """Measure the test split once, on ``best``, and write it into best's card (and last's if the same)."""
    card = json.loads((out_dir / "best.json").read_text())
    # on a copy: the trained model (and, under DDP, every rank's) keeps the last epoch's weights
    chosen = copy.deepcopy(model)
    chosen.load_state_dict(load_tensors(out_dir / "best.safetensors", device=test_data.device), strict=True)
    acc = evaluate(chosen, test_data, batch_size, channels_last)
    del chosen
    times = int(tested.get("times", 0)) + 1
    measured = {"epoch": best_epoch, "acc": acc, "times": times}
    card["clean_test_accuracy"] = acc
    # how often the test split was looked at in this folder's life (a resumed, longer run adds one)
    card["test_measurements"] = times
    with defer_keyboard_interrupt():
        atomic_write_json(out_dir / "best.json", card)
        last_path = out_dir / "last.json"
        last = json.loads(last_path.read_text())
        if last.get("sha256") == card.get("sha256"):
            last["clean_test_accuracy"], last["test_measurements"] = acc, times
            atomic_write_json(last_path, last)
    return measured


def _check_input_size(
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


def _card_base(
    config: TrainConfig, train_ds: ImageDataset, test_ds: ImageDataset, device: torch.device
) -> dict:
    h, w = train_ds.image_size
    return {
        "dataset": {
            "name": config.data.name,
            "kwargs": dict(config.data.kwargs),
            "classes": list(train_ds.classes),
            "num_classes": train_ds.num_classes,
            "input_size": [3, h, w],
            "mean": list(train_ds.mean),
            "std": list(train_ds.std),
            "n_train": len(train_ds),
            "n_test": len(test_ds),
        },
        "input_size": [3, h, w],
        "normalization": {"mean": list(train_ds.mean), "std": list(train_ds.std)},
        "training": config.model_dump(mode="json"),
        "seed": config.seed,
        "device": device_description(device),
    }


def _restore(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
    device: torch.device,
    out_dir: Path,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> None:
    """Weights, optimizer momentum, scheduler, grad scaler and RNG states from ``last``."""
    weights = load_tensors(out_dir / "last.safetensors", device=device)
    model.load_state_dict(weights, strict=True)
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, entries in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    # keep momentum buffers in the parameters' memory format (channels_last on CUDA)
    for param in model.parameters():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        if isinstance(buf, torch.Tensor) and buf.stride() != param.stride():
            optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(buf)
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
