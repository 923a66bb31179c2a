"""The trainer's resumable state: what an interrupted run needs to continue as if never stopped.

Out folder files written here (the trainer writes the checkpoints themselves)::

    trainer_state.safetensors + .json   optimizer momentum, RNG states (tensors) + scalar state (JSON)
    history.csv                         one row per epoch, columns :data:`HISTORY_COLUMNS`

No pickle: tensors go to safetensors, everything else to JSON; the JSON is written last and carries
the sha256 of ``last.safetensors``, so a state whose save was cut off is refused, not half-loaded.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import UserError
from ..utils import atomic_write_json, atomic_write_text
from .checkpoint import load_tensors, save_tensors_atomic, sha256_file, state_dict_for_saving

STATE_NAME = "trainer_state"
STATE_FORMAT_VERSION = 1
#: history.csv's columns. robust_val_acc / fgsm_val_acc / collapsed: adversarial training only
#: (validation accuracy under the training threat model's PGD and FGSM; catastrophic overfitting).
#: seconds: the epoch's wall clock (training and validation); cpu_seconds: the process's CPU time over
#: the same span, all threads, which a paused process (SIGSTOP) or a busy machine does not inflate;
#: precision: what the epoch's steps ran in (devices.precision_name).
HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_acc", "val_acc", "robust_val_acc", "fgsm_val_acc", "collapsed",
    "images_per_s", "seconds", "cpu_seconds", "precision",
)
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
        "adversarial.eval_every",
    }
)


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "kwargs":
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def check_same_run(saved: dict[str, Any], config: TrainConfig, out_dir: Path) -> None:
    old, new = flatten_config(saved), flatten_config(config.model_dump(mode="json"))
    # a key an older trainer did not know yet (e.g. adversarial.*) ran with today's default
    defaults = flatten_config(TrainConfig.model_validate({"model": config.model}).model_dump(mode="json"))
    for key in sorted(set(old) | set(new)):
        before = old.get(key, defaults.get(key))
        if key not in RESUMABLE_CHANGES and before != new.get(key):
            raise UserError(
                f"{out_dir} holds a run with {key}={before!r}, this config has {new.get(key)!r}: "
                "use another out folder, or delete it to start over"
            )


def save_state(
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


def load_state(out_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
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


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_COLUMNS})
    atomic_write_text(out_dir / "history.csv", buf.getvalue())


def restore(
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
