"""Checkpoint selection: the validation split ``best`` is chosen on, and what a card says about it.

The trainer holds out a seeded, stratified share of the *training* images (``val_fraction``) and
keeps ``best`` by accuracy on it, so the test split a sweep attacks played no part in choosing the
checkpoint. The card's ``selection`` section records how a checkpoint was chosen::

    "selection": {"rule": "best validation accuracy" | "last epoch",
                  "split": "validation" | null,      # the data the choice was made on
                  "source_split": "train",           # where the validation images came from
                  "fraction": 0.1, "n": 200, "n_train": 1800, "stratified": true, "seed": 0,
                  "indices_sha256": "...", "epoch": 7, "val_accuracy": 0.61}

:func:`selection_note` turns a card (as the sweep's manifest stores it) into one warning sentence
when the checkpoint's selection could have seen the data being evaluated, or the card does not say.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.registry import ImageDataset
from ..errors import UserError
from ..utils import derive_seed

RULE_VALIDATION = "best validation accuracy"
RULE_LAST = "last epoch"


def stratified_split(
    labels: torch.Tensor | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted: ``fraction`` of every class, seeded.

    Each class gives ``round(fraction * count)`` images (at least one when it has two or more and
    ``fraction > 0``, never all of them), so the validation split has the training split's class
    balance. The same labels, fraction and seed give the same split on every machine.
    """
    y = np.asarray(labels, dtype=np.int64)
    if fraction <= 0 or len(y) == 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "validation-split"))
    val: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = int(round(fraction * len(members)))
        k = min(max(k, 1 if len(members) >= 2 else 0), len(members) - 1)
        if k > 0:
            val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def indices_digest(indices: np.ndarray) -> str:
    """sha256 of the sorted index list (lets anyone check two runs held out the same images)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def selection_section(
    *, fraction: float, n_val: int, n_train: int, seed: int, digest: str | None
) -> dict[str, Any]:
    """The card's ``selection`` section before an epoch is chosen (``epoch``/``val_accuracy`` added later)."""
    if n_val == 0:
        return {"rule": RULE_LAST, "split": None, "fraction": 0.0, "n": 0, "n_train": n_train}
    return {
        "rule": RULE_VALIDATION,
        "split": "validation",
        "source_split": "train",
        "fraction": fraction,
        "n": n_val,
        "n_train": n_train,
        "stratified": True,
        "seed": seed,
        "indices_sha256": digest,
    }


def unwrap_card(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """The project checkpoint's own card: a resolved source's card (as the sweep's manifest stores it)
    wraps it under ``details``; a card without ``details`` (older manifests, nn.Module specs) is itself."""
    if card and isinstance(card.get("details"), dict) and card["details"]:
        return card["details"]
    return card


def selection_note(card: dict[str, Any] | None, label: str, evaluated_split: str = "test") -> str | None:
    """One sentence when ``label``'s checkpoint may have been chosen on the data it is evaluated on.

    ``None`` when the card says the checkpoint was chosen on a held-out validation split (or is
    simply the last epoch) and that split is not the one evaluated. Cards without a ``selection``
    section (older trainers chose ``best`` on the test split; outside models say nothing) and
    selection on the evaluated split each give a sentence saying so.
    """
    outside = bool(card) and "source" in card and not card.get("details")
    card = unwrap_card(card)
    if outside:  # a zoo/library model: its authors chose it, nothing here can retrain it
        return (
            f"{label}: an outside model ({card.get('source')}); which data chose its checkpoint is for its "
            f"authors to report: if that was this {evaluated_split} split, its numbers here are optimistic."
        )
    if not card:
        return (
            f"{label}: no model card, so how this checkpoint was chosen is unknown; if it was chosen on "
            f"the {evaluated_split} split, its numbers are optimistic."
        )
    sel = card.get("selection")
    if not isinstance(sel, dict):
        older = isinstance(card.get("training"), dict)
        why = (
            "it was written by an older trainer, which kept `best` by test accuracy"
            if older
            else "its card does not say which data chose it"
        )
        return (
            f"{label}: the checkpoint's card records no selection split ({why}); if it was chosen on the "
            f"{evaluated_split} split, its {evaluated_split} numbers are optimistic. Retrain with a "
            "validation split (robustbench-lta train, val_fraction > 0) or use the last epoch."
        )
    split = sel.get("split")
    if split and str(split) == evaluated_split:
        return (
            f"{label}: the checkpoint was chosen on the {split} split ({sel.get('rule', '?')}), the split "
            "this sweep evaluates: its numbers are optimistic (selection bias)."
        )
    return None


def selection_summary(card: dict[str, Any] | None) -> str:
    """A short phrase for the report's model list: how the checkpoint was chosen."""
    # the selection section lives in the checkpoint's own card, not in the source wrapper around it
    sel = (unwrap_card(card) or {}).get("selection")
    if not isinstance(sel, dict):
        return "selection: not recorded"
    if sel.get("split") is None:
        return f"selection: {sel.get('rule', RULE_LAST)} (no validation split)"
    acc = sel.get("val_accuracy")
    acc_txt = f", val acc {100 * acc:.1f}%" if isinstance(acc, float) and math.isfinite(acc) else ""
    epoch = f" epoch {sel['epoch']}" if sel.get("epoch") is not None else ""
    return (
        f"selection: {sel.get('rule')} on a {sel.get('split')} split of {sel.get('n')} "
        f"{sel.get('source_split', 'train')} images ({100 * float(sel.get('fraction', 0)):.0f}%){epoch}"
        f"{acc_txt}"
    )


def hold_out_validation(
    train_ds: ImageDataset, config: TrainConfig
) -> tuple[ImageDataset, ImageDataset | None, dict[str, Any]]:
    """(training images, validation images or None, the card's selection section before any epoch)."""
    train_idx, val_idx = stratified_split(train_ds.labels, config.val_fraction, config.seed)
    if config.val_fraction > 0 and len(val_idx) == 0:
        raise UserError(
            f"val_fraction={config.val_fraction} holds out no image of the {len(train_ds)} training images: "
            "raise data.n_train or val_fraction, or set val_fraction: 0 to keep the last epoch"
        )
    section = selection_section(
        fraction=config.val_fraction,
        n_val=len(val_idx),
        n_train=len(train_idx),
        seed=config.seed,
        digest=indices_digest(val_idx) if len(val_idx) else None,
    )
    if len(val_idx) == 0:
        return train_ds, None, section
    return train_ds.subset(torch.as_tensor(train_idx)), train_ds.subset(torch.as_tensor(val_idx)), section


def checkpoint_card(
    base: dict[str, Any], selection: dict[str, Any], epoch: int, val_acc: float | None, last: bool = False
) -> dict[str, Any]:
    """A checkpoint card: ``best`` records the choice; ``last`` is the final epoch, chosen on nothing."""
    sel = dict(selection)
    if last and sel.get("split") is not None:
        sel = {"rule": RULE_LAST, "split": None, "n": 0, "validation": selection}
    sel.update({"epoch": epoch, "val_accuracy": val_acc})
    return {
        **base,
        "epochs": epoch,
        "selection": sel,
        "clean_val_accuracy": val_acc,
        "clean_test_accuracy": None,
    }
