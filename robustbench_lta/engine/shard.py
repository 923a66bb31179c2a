"""A shard's clean state and its per-budget records: what a unit fills in and writes.

:func:`clean_pass` predicts a shard once (with attention maps for attention models); :class:`Records`
holds every budget's predictions, norms and flags with the worst-case carrying rule; the frames at the
end are the unit's tables. :func:`split_on_oom` halves a batch on CUDA out-of-memory for every call
the unit makes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..analysis.attention import box_mass, js_divergence
from ..errors import UserError
from ..results import ATTENTION_COLUMNS, SAMPLE_COLUMNS
from .cascade import UpstreamBreaks
from .explorer import ExplorerCapture
from .inputs import SampleSource
from .plan import Unit
from .runtime import PreparedModel


def _free_accelerator_memory() -> None:
    gc.collect()  # frames of the failed call caught in reference cycles hold its tensors too
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_on_oom(fn: Callable[..., list[torch.Tensor]], *parts: Any) -> list[torch.Tensor]:
    """``fn(*parts)``; on CUDA out-of-memory, ``fn`` on both halves of every part (recursively), joined.

    ``parts`` are batch-aligned (tensors, position arrays): each half gets its own positions, so an
    attack seeded from its first sample position draws a half's own random start. The halves run
    outside the ``except`` block: while it is active, the exception's traceback keeps the failed
    call's frames alive, and with them its activations and autograd graph, so halving would free
    little and end at batch size 1. A batch of one that runs out of memory raises.
    """
    n = len(parts[0])
    try:
        return fn(*parts)
    except torch.cuda.OutOfMemoryError:
        if n <= 1:
            raise
    # past the handler: the exception, its traceback and the failed call's tensors are released
    _free_accelerator_memory()
    h = n // 2
    first = split_on_oom(fn, *[p[:h] for p in parts])
    second = split_on_oom(fn, *[p[h:] for p in parts])
    return [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]


def predict(pm: PreparedModel, x: torch.Tensor, with_maps: bool) -> list[torch.Tensor]:
    """``[predicted class, *attention maps]`` of a batch, in float32 whatever the sweep's ``amp`` (the
    counted predictions never depend on the attack's precision), halving the batch on out-of-memory."""
    def run(xb: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode(), pm.model.float32():
            if with_maps:
                logits, maps = pm.model.logits_and_maps(xb)
                return [logits.argmax(1), *maps]
            return [pm.model(xb).argmax(1)]
    return split_on_oom(run, x)


@dataclass
class Shard:
    """The clean state of one shard, plus the per-eps records being filled in."""

    positions: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    maps: list[torch.Tensor] | None
    boxes: torch.Tensor | None
    size: tuple[int, int] = (0, 0)  # image (H, W): attention boxes are in pixels

    @property
    def correct(self) -> np.ndarray:
        return self.clean_pred == self.label


def clean_pass(pm: PreparedModel, source: SampleSource, positions: np.ndarray, batch_size: int,
               with_maps: bool, explorer: ExplorerCapture | None = None) -> Shard:
    m = len(positions)
    label = np.empty(m, dtype=np.int64)
    clean_pred = np.empty(m, dtype=np.int64)
    parts: list[list[torch.Tensor]] = []
    done = 0
    size = (0, 0)
    with torch.inference_mode():
        for pos, x, y in source.batches(positions, batch_size, pm.device):
            size = (int(x.shape[-2]), int(x.shape[-1]))
            pred, *maps = predict(pm, x, with_maps)
            if with_maps:
                parts.append(maps)
            if explorer is not None:
                explorer.add_clean(pos, x)
            k = len(x)
            label[done:done + k] = y.cpu().numpy()
            clean_pred[done:done + k] = pred.cpu().numpy()
            done += k
    if m and int(label.max()) >= pm.num_classes:
        raise UserError(f"model '{pm.label}' has {pm.num_classes} outputs but the data has labels up to "
                        f"{int(label.max())}: attack it on the dataset it was trained for")
    maps = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))] if parts else None
    boxes = torch.as_tensor(source.boxes[positions]) if source.boxes is not None else None
    return Shard(positions, label, clean_pred, maps, boxes, size)


class Records:
    """Per-eps predictions, norms and flags of one shard, with worst-case carrying."""

    def __init__(self, shard: Shard, n_eps: int) -> None:
        m = len(shard.positions)
        self.adv_pred = np.tile(shard.clean_pred, (n_eps, 1))
        self.norms = np.zeros((n_eps, m), dtype=np.float64)
        self.attacked = np.zeros((n_eps, m), dtype=bool)
        self.first_broken = np.full(m, n_eps, dtype=np.int64)  # index of the first eps that broke it
        self.skipped_by = np.full((n_eps, m), "", dtype=object)  # cascade: the earlier attack's label

    def record(self, k: int, rel: np.ndarray, pred: np.ndarray, norms: np.ndarray, label: np.ndarray) -> None:
        self.adv_pred[k, rel] = pred
        self.norms[k, rel] = norms
        self.attacked[k, rel] = True
        hit = rel[pred != label[rel]]
        self.first_broken[hit] = np.minimum(self.first_broken[hit], k)

    def carry(self) -> None:
        """A sample broken at budget j is broken with the same example at every later budget."""
        for k in range(1, self.adv_pred.shape[0]):
            was = (self.first_broken < k) & ~self.attacked[k]
            j = self.first_broken[was]
            self.adv_pred[k, was] = self.adv_pred[j, np.flatnonzero(was)]
            self.norms[k, was] = self.norms[j, np.flatnonzero(was)]

    def fill_upstream(self, up: UpstreamBreaks, skip: np.ndarray) -> None:
        """Cascade: where an earlier attack broke a sample this one did not attack, its example counts."""
        for k in range(self.adv_pred.shape[0]):
            fill = skip[k] & ~self.attacked[k] & (self.first_broken >= k)
            self.adv_pred[k, fill] = up.pred[k, fill]
            self.norms[k, fill] = up.norm[k, fill]
            self.skipped_by[k, fill] = up.by[k, fill]


def drift_rows(shard: Shard, rel: np.ndarray, adv_maps: list[torch.Tensor], eps: float,
                index: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample drift of every level's map (clean vs adversarial), as column arrays."""
    cols: dict[str, list[np.ndarray]] = {"level": [], "js_divergence": [], "box_mass_clean": [],
                                         "box_mass_adv": [], "index": []}
    assert shard.maps is not None
    sel = torch.as_tensor(rel, device=shard.maps[0].device)
    for level, adv in enumerate(adv_maps):
        clean = shard.maps[level][sel]
        cols["js_divergence"].append(js_divergence(clean, adv).float().cpu().numpy())
        if shard.boxes is not None:
            boxes = shard.boxes[torch.as_tensor(rel)].to(adv.device)
            cols["box_mass_clean"].append(box_mass(clean, boxes, shard.size).float().cpu().numpy())
            cols["box_mass_adv"].append(box_mass(adv, boxes, shard.size).float().cpu().numpy())
        else:
            cols["box_mass_clean"].append(np.full(len(rel), np.nan, dtype=np.float32))
            cols["box_mass_adv"].append(np.full(len(rel), np.nan, dtype=np.float32))
        cols["level"].append(np.full(len(rel), level, dtype=np.int64))
        cols["index"].append(np.asarray(index))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["eps"] = np.full(len(out["level"]), float(eps))
    return out


def sample_frame(unit: Unit, source: SampleSource, shard: Shard, rec: Records,
                  chain: tuple[float, ...]) -> pd.DataFrame:
    frames = []
    index = source.index[shard.positions].astype(np.int64)
    for k, eps in enumerate(chain):
        frames.append(pd.DataFrame({
            "model": unit.cell.model, "attack": unit.cell.attack.label, "eps": float(eps), "index": index,
            "label": shard.label, "clean_pred": shard.clean_pred, "adv_pred": rec.adv_pred[k],
            "norm": rec.norms[k], "attacked": rec.attacked[k], "broken": rec.adv_pred[k] != shard.label,
            "skipped_by": rec.skipped_by[k]}))
    return pd.concat(frames, ignore_index=True)[SAMPLE_COLUMNS]


def attention_frame(unit: Unit, rows: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    df = pd.DataFrame({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
    df.insert(0, "attack", unit.cell.attack.label)
    df.insert(0, "model", unit.cell.model)
    return df[ATTENTION_COLUMNS]
