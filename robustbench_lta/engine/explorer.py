"""Explorer images: what the HTML report's per-sample explorer shows, stored by the sweep.

Per cell (one attack on one model), the samples at positions ``0..K-1`` (``explorer_samples``; the
same samples for every model and attack, so one sample can be followed across them): the clean
image, the perturbation at every budget and, for attention models, the attention maps of the clean
and of each adversarial image. The budget is bounded by K, not by n: a cell stores about
``K x (1 + E)`` images (E budgets), whatever the number of samples swept.

How it is captured costs no extra model call: the clean images and maps come from the unit's clean
pass, the adversarial ones from the forward that predicts each adversarial batch (attention models
compute their maps in that same forward), so the work counters are exactly those of a sweep without
explorer images. A unit writes its share beside its parquet before its json commit marker
(:meth:`~.store.ResultStore.write_unit`); assembly merges a cell's shares into
``explorer/MODEL/ATTACK.npz`` (:func:`assemble_cell`). The arrays are described once, in
:data:`robustbench_lta.results.EXPLORER_KEYS`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..results import EXPLORER_DELTA_LEVELS, ResultsLayout
from ..utils import atomic_write_bytes

FORMAT = 1


def _hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """(n,C,H,W) float in [0,1] -> (n,H,W,C) uint8 (rounded: the data's own 8-bit values come back)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class ExplorerCapture:
    """The explorer images of one unit: the shard's positions below K, filled in as the unit runs."""

    def __init__(self, start: int, stop: int, limit: int, n_eps: int) -> None:
        self.start = start
        self.positions = np.arange(start, min(stop, limit), dtype=np.int64)
        self.n_eps = n_eps
        self.clean: np.ndarray | None = None  # (k,H,W,C) uint8
        self.delta: np.ndarray | None = None  # (E,k,H,W,C) float32 on the [0,1] scale
        self.stored = np.zeros((n_eps, len(self.positions)), dtype=bool)
        self.clean_maps: list[np.ndarray] = []
        self.adv_maps: list[np.ndarray] = []

    @classmethod
    def for_unit(cls, start: int, stop: int, limit: int, n_eps: int) -> ExplorerCapture | None:
        """A capture when the unit holds positions below ``limit`` (K), else None (no work at all)."""
        return cls(start, stop, limit, n_eps) if limit > 0 and start < limit else None

    def _rows(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the batch, their slots in this capture) for the batch's positions below K."""
        if not len(self.positions):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.flatnonzero((pos >= self.positions[0]) & (pos <= self.positions[-1]))
        return rows, pos[rows] - self.start

    def wants(self, pos: np.ndarray) -> bool:
        return bool(len(self._rows(pos)[0]))

    def add_clean(self, pos: np.ndarray, x: torch.Tensor) -> None:
        """Clean images of a clean-pass batch."""
        rows, slots = self._rows(pos)
        if not len(rows):
            return
        images = _hwc_uint8(x[torch.as_tensor(rows, device=x.device)])
        if self.clean is None:
            self.clean = np.zeros((len(self.positions), *images.shape[1:]), dtype=np.uint8)
            self.delta = np.zeros((self.n_eps, *self.clean.shape), dtype=np.float32)
        self.clean[slots] = images

    def set_clean_maps(self, maps: Sequence[torch.Tensor] | None) -> None:
        """The clean pass's attention maps of the whole shard (one (m,h,w) tensor per level)."""
        if not maps:
            return
        k = len(self.positions)
        self.clean_maps = [m[:k].float().cpu().numpy() for m in maps]
        self.adv_maps = [np.zeros((self.n_eps, *c.shape), dtype=np.float32) for c in self.clean_maps]

    def add_adversarial(self, k: int, pos: np.ndarray, x: torch.Tensor, x_adv: torch.Tensor,
                        maps: Sequence[torch.Tensor]) -> None:
        """One verified adversarial batch at budget ``k`` (``x`` its clean images), with its maps."""
        rows, slots = self._rows(pos)
        if not len(rows) or self.delta is None:
            return
        sel = torch.as_tensor(rows, device=x_adv.device)
        diff = (x_adv[sel].detach().float() - x[sel.to(x.device)].detach().float().to(x_adv.device))
        self.delta[k, slots] = diff.permute(0, 2, 3, 1).cpu().numpy()
        self.stored[k, slots] = True
        for level, m in enumerate(maps[:len(self.adv_maps)]):
            self.adv_maps[level][k, slots] = m[sel.to(m.device)].float().cpu().numpy()

    def carry(self, first_broken: np.ndarray, attacked: np.ndarray) -> None:
        """Worst-case carrying, as the records do: a sample broken at budget j and not attacked at a
        later budget keeps budget j's adversarial example there."""
        k_slots = np.arange(len(self.positions))
        rel = self.positions - self.start
        for k in range(1, self.n_eps):
            was = (first_broken[rel] < k) & ~attacked[k, rel] & ~self.stored[k]
            if not was.any() or self.delta is None:
                continue
            slots, j = k_slots[was], first_broken[rel][was]
            self.delta[k, slots] = self.delta[j, slots]
            self.stored[k, slots] = self.stored[j, slots]
            for adv in self.adv_maps:
                adv[k, slots] = adv[j, slots]

    def arrays(self, *, model: str, attack: str, key: str, eps: Sequence[float], index: np.ndarray,
               label: np.ndarray) -> dict[str, np.ndarray] | None:
        """The unit's share as :data:`~robustbench_lta.results.EXPLORER_KEYS` arrays (None: nothing seen)."""
        if self.clean is None or self.delta is None:
            return None
        rel = self.positions - self.start
        delta_max = np.abs(self.delta).reshape(self.n_eps, len(self.positions), -1).max(axis=2)
        scale = np.where(delta_max > 0, EXPLORER_DELTA_LEVELS / np.maximum(delta_max, 1e-12), 0.0)
        delta_q = np.round(self.delta * scale[:, :, None, None, None]).clip(
            -EXPLORER_DELTA_LEVELS, EXPLORER_DELTA_LEVELS).astype(np.int8)
        out: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "model": np.array(model), "attack": np.array(attack),
            "key": np.array(key), "eps": np.asarray(eps, dtype=np.float64),
            "position": self.positions.copy(), "index": np.asarray(index, dtype=np.int64)[rel],
            "label": np.asarray(label, dtype=np.int64)[rel], "clean": self.clean, "delta": delta_q,
            "delta_max": delta_max.astype(np.float32), "stored": self.stored.copy(),
        }
        for level, (clean, adv) in enumerate(zip(self.clean_maps, self.adv_maps, strict=True)):
            out[f"clean_level{level}"] = clean.astype(np.float16)
            out[f"adv_level{level}"] = adv.astype(np.float16)
        return out


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _read(path: Any) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None  # an unreadable share is left out (the report says which samples lack images)


def merge_shares(shares: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One cell's arrays from its units' shares (sorted by position; per-sample axes joined)."""
    shares = sorted(shares, key=lambda s: int(s["position"][0]))
    first = shares[0]
    out = {k: first[k] for k in ("format", "model", "attack", "key", "eps")}
    for k in first:
        if k in out:
            continue
        axis = 1 if first[k].ndim >= 2 and (k in ("delta", "delta_max", "stored") or k.startswith("adv_")) \
            else 0
        out[k] = np.concatenate([s[k] for s in shares], axis=axis)
    return out


def assemble_cell(layout: ResultsLayout, cell_id: str, model: str, attack: str, key: str,
                  units: Sequence[tuple[int, int, dict[str, Any]]]) -> None:
    """Merge a cell's unit shares into ``explorer/MODEL/ATTACK.npz`` (atomically).

    Without any share (explorer_samples 0, or units written before explorer images existed) an
    older sweep's file at that path is removed when its key differs: it would show other images.
    """
    shares = []
    for start, stop, _meta in units:
        path = layout.unit_explorer_npz(cell_id, f"{start:09d}-{stop:09d}")
        share = _read(path) if path.is_file() else None
        if share is not None and str(share.get("key", "")) == key and len(share.get("position", ())):
            shares.append(share)
    target = layout.explorer_npz(model, attack)
    if not shares:
        if target.is_file():
            old = _read(target)
            if old is None or str(old.get("key", "")) != key:
                target.unlink(missing_ok=True)
        return
    merged = merge_shares(shares)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, npz_bytes(merged))
