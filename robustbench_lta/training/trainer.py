"""Train a registered model on a registered dataset: the paper's SGD recipe, optionally under a threat
model (adversarial training), resumable, no pickle.

The jobs are split by module: batches.py (data on the device, augmentation, clean accuracy),
adversarial.py (the training threat model: examples, loss, robust validation, catastrophic
overfitting), state.py (trainer state and history.csv), selection.py (validation split and cards),
distributed.py (DDP), checkpoint.py (safetensors + JSON cards). This file holds the run: setup, the
epoch loop (:func:`_train`, one screen), selection of ``best`` and the final test measurement.

All randomness of training (shuffling, augmentation, attack starts) comes from one seeded
``torch.Generator``; model initialisation and any dropout use torch's global generator, seeded inside
a ``fork_rng`` block so the caller's random state is left as it was. On CPU the same config gives the
same weights, and an interrupted run resumed from ``last`` gives the same weights as an uninterrupted one.

Out folder (``config.out`` or ``runs/<model name>``)::

    best.safetensors + best.json        weights + card of the selected epoch
    last.safetensors + last.json        weights + card after the latest finished epoch
    trainer_state.safetensors + .json   optimizer momentum, RNG states (tensors) + scalar state (JSON)
    history.csv                         state.HISTORY_COLUMNS, one row per epoch

Model selection never sees the test split: ``val_fraction`` (default 10 %) of the training images
is held out, seeded and stratified (training/selection.py). ``best`` is chosen by clean accuracy on
it, or, under a threat model, by robust (PGD) accuracy on it, never at a catastrophically overfitted
epoch; the test split is measured once, for the chosen epoch, when training finishes. ``val_fraction:
0`` holds nothing out: ``best`` is then the last epoch.

Mixed precision (``amp``): bf16 autocast where the hardware has it natively (CUDA Ampere+, a CPU with
AMX or AVX512-BF16), fp16 with a grad scaler on older GPUs, float32 elsewhere; the card's
``precision`` says which ran. Evaluation (clean and robust accuracy predictions) is float32.

Running again with the same out folder resumes after the last finished epoch (raise ``epochs`` to
train longer). Ctrl-C stops training; ``last`` always holds a complete, loadable epoch.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, apply_threads
from ..data.registry import ImageDataset, load_dataset
from ..devices import amp_note, precision_name
from ..discovery import load_plugins
from ..errors import UserError
from ..models.registry import model_info
from ..utils import atomic_write_json, device_description, resolve_device
from . import distributed
from .adversarial import is_collapsed, robust_validation
from .batches import DeviceBatches, augment, evaluate
from .checkpoint import defer_keyboard_interrupt, load_tensors, save_checkpoint
from .run import Run, build_model, setup_run, train_epoch
from .selection import checkpoint_card as _card
from .selection import hold_out_validation
from .state import (
    HISTORY_COLUMNS,
    STATE_NAME,
    check_same_run,
    load_state,
    restore,
    save_state,
    write_history,
)

__all__ = ["HISTORY_COLUMNS", "STATE_NAME", "TrainResult", "augment", "build_model", "load_splits", "train"]


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out_dir: Path
    best_path: Path
    last_path: Path
    best_acc: float  # selection metric of the chosen epoch: clean (or robust, under a threat model) val acc
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    final_acc: float = float("nan")  # clean validation accuracy of the last epoch
    resumed_from: int = 0
    test_acc: float = float("nan")  # test accuracy of the chosen epoch, measured once
    selection: dict[str, Any] = field(default_factory=dict)  # the card's selection section
    precision: str = "float32"  # what the training steps ran in (card: precision)
    collapsed_epochs: list[int] = field(default_factory=list)  # catastrophic overfitting (fast AT)


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
    saved = load_state(out_dir)
    if saved is not None:
        check_same_run(saved[0]["config"], config, out_dir)
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


def _validate(run: Run, row: dict[str, Any], val_data: DeviceBatches | None, history: list[dict[str, Any]],
              eval_bs: int) -> dict[str, Any]:
    """Clean validation accuracy (every ``eval_every`` epochs) and, under a threat model, robust
    validation accuracy and the catastrophic-overfitting flag (every ``adversarial.eval_every``)."""
    config, epoch = run.config, row["epoch"]
    final = epoch == config.epochs
    row.update(val_acc=None, robust_val_acc=None, fgsm_val_acc=None, collapsed=None)
    if val_data is None:
        return row
    if epoch % config.eval_every == 0 or final:
        row["val_acc"] = round(evaluate(run.model, val_data, eval_bs, run.channels_last), 6)
    adv = config.adversarial
    if run.adversarial is not None and (epoch % adv.eval_every == 0 or final):
        measured = robust_validation(run.model, val_data, adv, batch_size=eval_bs,
                                     channels_last=run.channels_last, seed=config.seed, epoch=epoch,
                                     autocast=run.autocast())
        row.update(robust_val_acc=round(measured.pgd_acc, 6), fgsm_val_acc=round(measured.fgsm_acc, 6),
                   collapsed=is_collapsed(history, measured, adv.collapse_ratio))
    return row


def _selection_value(run: Run, row: dict[str, Any]) -> float | None:
    """What ``best`` is chosen on: robust val acc under a threat model (never a collapsed epoch)."""
    if run.adversarial is not None:
        return None if row["robust_val_acc"] is None or row["collapsed"] else float(row["robust_val_acc"])
    return row["val_acc"]


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
    state0 = saved[0] if saved is not None else {}
    # a resumed run keeps the precision its first sitting chose (on the same kind of device)
    kept = state0.get("precision") if state0.get("device_type") == device.type else None
    run = setup_run(config, progress, device, out_dir, train_ds, kept)
    selection = _selection_rule(config, selection, val_ds)
    start_epoch, best_acc, best_epoch, history, last_acc = 0, -1.0, 0, [], float("nan")
    tested: dict[str, Any] = {}  # {"epoch": e, "acc": a, "times": k}: the one test measurement
    if saved is not None:
        state, tensors = saved
        start_epoch = int(state["epoch"])
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        history, last_acc = list(state["history"]), float(state["last_acc"])
        tested = dict(state.get("tested") or {})
        restore(run.model, run.optimizer, run.scheduler, run.scaler, run.generator, device, out_dir, state,
                tensors)
        if run.progress:
            print(f"resuming {out_dir} after epoch {start_epoch}", file=sys.stderr)
    train_data, test_data = DeviceBatches(train_ds, device), DeviceBatches(test_ds, device)
    val_data = DeviceBatches(val_ds, device) if val_ds is not None else None
    eval_bs = max(run.batch_size, 256)
    card_base = _card_base(config, train_ds, test_ds, device, run)
    card_base["dataset"]["n_val"] = 0 if val_ds is None else len(val_ds)
    if run.ddp is not None:
        run.ddp.agree("epoch to resume after", start_epoch, device)
        run.step_model = run.ddp.wrap(run.model, device)

    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            row = train_epoch(run, epoch, train_data)
            if not run.is_main:
                continue  # rank 0 evaluates and writes checkpoints, state and history
            row = _validate(run, row, val_data, history, eval_bs)
            if row["val_acc"] is not None:
                last_acc = row["val_acc"]
            row["seconds"] = round(time.perf_counter() - row.pop("t0"), 3)
            row["cpu_seconds"] = round(time.process_time() - row.pop("cpu0"), 3)
            row["precision"] = precision_name(run.amp_dtype)
            history.append(row)
            value = _selection_value(run, row)
            # without a validation split nothing is selected: best follows the last epoch
            improved = val_data is None or (value is not None and value > best_acc)
            if improved:
                best_acc, best_epoch = (math.nan if value is None else value), epoch
            _save_epoch(run, epoch, improved, card_base, selection, row, last_acc, history,
                        {"best_acc": best_acc, "best_epoch": best_epoch, "last_acc": last_acc,
                         "history": history, "tested": tested,
                         "precision": precision_name(run.amp_dtype), "device_type": run.device.type})
            _log_epoch(run, row)
    except KeyboardInterrupt:
        print(f"\ninterrupted in epoch {epoch}: {out_dir / 'last.safetensors'} holds epoch {epoch - 1}; "
              "run the same command again to resume", file=sys.stderr)
        raise
    return _finish(run, start_epoch, best_acc, best_epoch, last_acc, history, tested, test_data,
                   eval_bs, val_data is not None, selection)


def _selection_rule(config: TrainConfig, selection: dict[str, Any], val_ds: ImageDataset | None
                    ) -> dict[str, Any]:
    """The card's selection section, naming the metric (robust accuracy under a threat model)."""
    if val_ds is None:
        return selection
    adv = config.adversarial
    if not adv.enabled:
        return {**selection, "metric": "clean validation accuracy"}
    norm = "Linf" if adv.norm == "linf" else "L2"
    return {**selection, "rule": "best robust validation accuracy",
            "metric": f"PGD-{adv.eval_steps} {norm} {adv.eps:g}/{adv.eps_scale:g} accuracy on the first "
                      f"{min(adv.eval_n, len(val_ds))} validation images, every {adv.eval_every} epoch(s); "
                      "catastrophically overfitted epochs excluded"}


def _save_epoch(run: Run, epoch: int, improved: bool, card_base: dict[str, Any], selection: dict[str, Any],
                row: dict[str, Any], last_acc: float, history: list[dict[str, Any]],
                scalars: dict[str, Any]) -> None:
    collapsed = [int(r["epoch"]) for r in history if r.get("collapsed")]
    extra = {"catastrophic_overfitting": {"detected": bool(collapsed), "epochs": collapsed}} \
        if run.adversarial is not None else {}
    with defer_keyboard_interrupt():
        if improved:
            card = _card(card_base, selection, epoch, row["val_acc"])
            card["selection"]["robust_val_accuracy"] = row.get("robust_val_acc")
            save_checkpoint(run.model, run.out_dir / "best", {**card, **extra})
        last = _card(card_base, selection, epoch, None if math.isnan(last_acc) else last_acc, last=True)
        save_checkpoint(run.model, run.out_dir / "last", {**last, **extra})
        save_state(run.out_dir, epoch=epoch, config=run.config, optimizer=run.optimizer,
                   scheduler=run.scheduler, scaler=run.scaler, generator=run.generator, device=run.device,
                   scalars=scalars)
        write_history(run.out_dir, history)


def _log_epoch(run: Run, row: dict[str, Any]) -> None:
    if not run.progress:
        return
    from tqdm.auto import tqdm

    shown = "-" if row["val_acc"] is None else f"{row['val_acc']:.4f}"
    robust = ""
    if row.get("robust_val_acc") is not None:
        robust = f"  robust val acc {row['robust_val_acc']:.4f} (FGSM {row['fgsm_val_acc']:.4f})"
        if row["collapsed"]:
            robust += "  CATASTROPHIC OVERFITTING: PGD accuracy collapsed while FGSM accuracy held"
    tqdm.write(
        f"epoch {row['epoch']}/{run.config.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.4f}  val acc {shown}{robust}  {row['images_per_s']:.0f} img/s",
        file=sys.stderr,
    )


def _finish(run: Run, start_epoch: int, best_acc: float, best_epoch: int, last_acc: float,
            history: list[dict[str, Any]], tested: dict[str, Any], test_data: DeviceBatches, eval_bs: int,
            has_val: bool, selection: dict[str, Any]) -> TrainResult:
    """Test the chosen epoch once (rank 0), print the summary, return the result."""
    config, out_dir = run.config, run.out_dir
    # under DDP only rank 0 holds the current selection and writes: the other ranks skipped the
    # per-epoch bookkeeping, so their best_epoch is the resumed one and testing there would race rank 0
    if run.is_main and tested.get("epoch") != best_epoch and best_epoch > 0:
        tested = _test_chosen_epoch(run.model, test_data, eval_bs, run.channels_last, out_dir, tested,
                                    best_epoch)
        with defer_keyboard_interrupt():
            state = json.loads((out_dir / f"{STATE_NAME}.json").read_text())
            state["tested"] = tested
            atomic_write_json(out_dir / f"{STATE_NAME}.json", state)
    test_acc = float(tested.get("acc", math.nan))
    rates = [r["images_per_s"] for r in history if r.get("images_per_s")]
    ips = f", {sum(rates) / len(rates):.0f} img/s" if rates else ""
    done = "already trained" if start_epoch >= config.epochs else "trained"
    collapsed = [int(r["epoch"]) for r in history if r.get("collapsed")]
    if run.ddp is not None:
        run.ddp.barrier()  # every rank returns once rank 0 has written the last checkpoint
    if run.is_main:
        metric = "robust val acc" if run.adversarial is not None else "val acc"
        chosen = (
            f"best {metric} {best_acc:.4f} (epoch {best_epoch}, {selection['n']} held-out train images), "
            f"last val acc {last_acc:.4f}"
            if has_val
            else f"no validation split: best = last epoch {best_epoch}"
        )
        threat = f" under {config.adversarial.label()}" if run.adversarial is not None else ""
        warn = (f"; catastrophic overfitting at epoch(s) {collapsed} (never selected)" if collapsed else "")
        print(
            f"{done} {config.model.name} on {config.data.name}{threat} for {len(history)} epoch(s), "
            f"{precision_name(run.amp_dtype)}: {chosen}; test acc {test_acc:.4f} (measured once, chosen "
            f"epoch){ips}{warn} -> {out_dir}"
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
        precision=precision_name(run.amp_dtype),
        collapsed_epochs=collapsed,
    )


def _test_chosen_epoch(
    model: nn.Module,
    test_data: DeviceBatches,
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


def _card_base(
    config: TrainConfig, train_ds: ImageDataset, test_ds: ImageDataset, device: torch.device, run: Run
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
        "precision": precision_name(run.amp_dtype),
        "amp": amp_note(config.amp, device, run.kept_precision),
        "channels_last": run.channels_last,
        # the training threat model: what robustness this network was trained for (report page 1)
        "threat_model": {"label": config.adversarial.label(), **config.adversarial.model_dump(mode="json"),
                         "eps_01": config.adversarial.eps01, "step_01": config.adversarial.step01,
                         "train_steps": config.adversarial.train_steps}
        if config.adversarial.enabled else None,
    }
