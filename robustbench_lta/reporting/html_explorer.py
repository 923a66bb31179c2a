"""The HTML report's per-sample explorer: records from samples.parquet, images from explorer/*.npz.

Only the results folders are read (``explorer/MODEL/ATTACK.npz``, written by the sweep for the
first ``explorer_samples`` samples of each cell: :data:`robustbench_lta.results.EXPLORER_KEYS`).
Predictions, labels and "broken" come from samples.parquet, the images from the explorer files;
every image becomes a small PNG named by its content (identical images, e.g. an example carried to
larger budgets, are written once). A cell without explorer images (a sweep run before they existed,
or with ``explorer_samples: 0``) still lists its first samples' records, without pictures.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..results import CASCADE_SUFFIX, EPS_TOL, EXPLORER_DELTA_LEVELS, WORST_CASE, ResultsLayout
from .load import ResultsBundle, eps_label

#: records listed per cell when it has no explorer images (the sweep's default K)
FALLBACK_SAMPLES = 8
#: attention maps share one colour scale per model and level: 0 to this percentile of their values
MAP_PERCENTILE = 99.5
MAP_COLOURMAP = "inferno"


@dataclass
class ExplorerData:
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    budget: str = ""
    images: int = 0
    map_scales: dict[str, list[float]] = field(default_factory=dict)  # model -> vmax per level


class _ImageWriter:
    """PNGs into ``folder``, named by content: the same picture is written (and downloaded) once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: set[str] = set()

    def png(self, rgb: np.ndarray) -> str:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
        name = hashlib.sha1(data).hexdigest()[:16] + ".png"
        if name not in self.written:
            (self.folder / name).write_bytes(data)
            self.written.add(name)
        return f"{self.folder.name}/{name}"


def _read_cell(path: Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # a damaged optional file costs its pictures, not the report
        notes.append(f"{path} could not be read ({type(exc).__name__}): its samples are listed without "
                     "images")
        return None
    need = ("clean", "delta", "delta_max", "stored", "index", "eps")
    if any(k not in data for k in need):
        absent = [k for k in need if k not in data]
        notes.append(f"{path} lacks {absent}: its samples are listed without images")
        return None
    return data


def _levels(cell: dict[str, np.ndarray]) -> int:
    return sum(1 for k in cell if k.startswith("clean_level"))


def _amplification(delta_max: np.ndarray) -> float:
    """A factor that maps the largest |perturbation| of a budget to half the grey range, rounded
    down to two significant digits (so the stated factor is the one applied, and nothing clips)."""
    top = float(delta_max.max()) if delta_max.size else 0.0
    if top <= 0:
        return 1.0
    raw = 0.5 / top
    digits = 10 ** (math.floor(math.log10(raw)) - 1)
    return max(math.floor(raw / digits) * digits, digits)


class _CellImages:
    """The pictures of one explorer file: clean, adversarial, perturbation, attention overlays."""

    def __init__(self, cell: dict[str, np.ndarray], writer: _ImageWriter, map_vmax: list[float]) -> None:
        self.cell, self.writer, self.map_vmax = cell, writer, map_vmax
        self.slot = {int(i): s for s, i in enumerate(cell["index"])}
        self.amp = [_amplification(cell["delta_max"][k][cell["stored"][k]]) for k in range(len(cell["eps"]))]

    def eps_slot(self, eps: float) -> int | None:
        hit = np.flatnonzero(np.abs(self.cell["eps"].astype(float) - eps) <= EPS_TOL) if math.isfinite(eps) \
            else np.flatnonzero(~np.isfinite(self.cell["eps"].astype(float)))
        return int(hit[0]) if len(hit) else None

    def _delta(self, k: int, s: int) -> np.ndarray:
        scale = float(self.cell["delta_max"][k, s]) / EXPLORER_DELTA_LEVELS
        return self.cell["delta"][k, s].astype(np.float32) * scale

    def _overlay(self, image: np.ndarray, attention: np.ndarray, level: int) -> str:
        """The map in the shared colour scale, upsampled (bilinear) onto the grey image."""
        from matplotlib import colormaps
        from PIL import Image

        vmax = self.map_vmax[level] if level < len(self.map_vmax) and self.map_vmax[level] > 0 else 1.0
        heat = colormaps[MAP_COLOURMAP](np.clip(attention.astype(np.float32) / vmax, 0, 1))[..., :3]
        h, w = image.shape[:2]
        heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                          dtype=np.float32)
        grey = image.astype(np.float32).mean(axis=2, keepdims=True)
        return self.writer.png((0.4 * grey + 0.6 * heat).round().clip(0, 255).astype(np.uint8))

    def clean(self, index: int) -> str | None:
        s = self.slot.get(index)
        return None if s is None else self.writer.png(self.cell["clean"][s])

    def pictures(self, index: int, eps: float) -> dict[str, Any] | None:
        """Adversarial image, amplified perturbation and map overlays of one sample at one budget."""
        s, k = self.slot.get(index), self.eps_slot(eps)
        if s is None or k is None or not bool(self.cell["stored"][k, s]):
            return None
        clean = self.cell["clean"][s]
        delta = self._delta(k, s)
        adv = (clean.astype(np.float32) + 255 * delta).round().clip(0, 255).astype(np.uint8)
        pert = ((0.5 + self.amp[k] * delta) * 255).round().clip(0, 255).astype(np.uint8)
        out: dict[str, Any] = {"adv": self.writer.png(adv), "pert": self.writer.png(pert), "amp": self.amp[k],
                               "linf": float(np.abs(delta).max()) * 255, "maps": []}
        for j in range(_levels(self.cell)):
            out["maps"].append({"clean": self._overlay(clean, self.cell[f"clean_level{j}"][s], j),
                                "adv": self._overlay(adv, self.cell[f"adv_level{j}"][k, s], j)})
        return out


def _map_scales(cells: dict[tuple[str, str], dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Per model and level: the colour scale's top, over every stored clean and adversarial map."""
    values: dict[str, dict[int, list[np.ndarray]]] = {}
    for (model, _attack), cell in cells.items():
        for j in range(_levels(cell)):
            per = values.setdefault(model, {}).setdefault(j, [])
            per.append(cell[f"clean_level{j}"].astype(np.float32).ravel())
            per.append(cell[f"adv_level{j}"][cell["stored"]].astype(np.float32).ravel())
    return {m: [float(np.percentile(np.concatenate(levels[j]), MAP_PERCENTILE)) for j in sorted(levels)]
            for m, levels in values.items()}


def _original_model(model: str, folder_label: str) -> str:
    """The label the sweep used (the report appends " [folder]" when two folders share it)."""
    return model.removesuffix(f" [{folder_label}]")


def _load_cells(bundle: ResultsBundle, notes: list[str]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    cells: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    folder_of = dict(zip(bundle.manifests, bundle.folders, strict=True))
    s = bundle.summary[bundle.summary["attack"] != WORST_CASE]
    for model in bundle.models:
        label = bundle.model_folder.get(model, "")
        layout = ResultsLayout(Path(folder_of[label]))
        attacks = sorted(set(s[s["model"] == model]["attack"].astype(str).str.removesuffix(CASCADE_SUFFIX)))
        for attack in attacks:
            path = layout.explorer_npz(_original_model(model, label), attack)
            cell = _read_cell(path, notes) if path.is_file() else None
            if cell is not None:
                cells[(model, attack)] = cell
    return cells


def _budget_sentence(cells: dict[tuple[str, str], dict[str, np.ndarray]], n_cells: int) -> str:
    """What the explorer holds, from the files themselves (a manifest may predate the setting)."""
    if not cells:
        return ("The results hold no explorer images (swept before they were stored, or with "
                "explorer_samples: 0): the explorer lists predictions only.")
    ks = sorted({len(c["index"]) for c in cells.values()})
    return (f"The sweep stored images of the first {' or '.join(map(str, ks))} samples (in sample order; "
            f"setting explorer_samples) of {len(cells)} of {n_cells} cells (model x attack).")


def build_explorer(bundle: ResultsBundle, img_dir: Path) -> ExplorerData:
    """Records (one per model x attack x budget x stored sample) and their pictures under ``img_dir``."""
    data = ExplorerData()
    if bundle.samples is None or bundle.samples.empty:
        data.notes.append("no samples.parquet: the explorer has nothing to show")
        return data
    img_dir.mkdir(parents=True, exist_ok=True)
    writer = _ImageWriter(img_dir)
    cells = _load_cells(bundle, data.notes)
    data.map_scales = _map_scales(cells)
    images = {key: _CellImages(cell, writer, data.map_scales.get(key[0], [])) for key, cell in cells.items()}
    samples = bundle.samples.copy()
    samples["base"] = samples["attack"].astype(str).str.removesuffix(CASCADE_SUFFIX)
    classes = bundle.classes or []
    no_images = 0
    groups = samples.groupby(["model", "base"], sort=True)
    for (model, attack), rows in groups:
        cell = images.get((model, attack))
        if cell is not None:
            rows = rows[rows["index"].isin(list(cell.slot))]
        else:
            first = pd.unique(rows["index"])[:FALLBACK_SAMPLES]
            rows = rows[rows["index"].isin(first)]
            no_images += 1
        for r in rows.itertuples(index=False):
            data.records.append(_record(r, cell, images, classes))
    data.budget = _budget_sentence(cells, len(groups))
    if no_images:
        data.notes.append(f"{no_images} cell(s) have no explorer images (a sweep run before they were "
                          "stored, "
                          f"or with explorer_samples: 0): their first {FALLBACK_SAMPLES} samples are listed "
                          "without pictures; re-run the sweep into a new folder to get them")
    data.images = len(writer.written)
    return data


def _record(r: Any, cell: _CellImages | None, images: dict[tuple[str, str], _CellImages],
            classes: list[str]) -> dict[str, Any]:
    eps, index = float(r.eps), int(r.index)
    label, clean_pred, adv_pred = int(r.label), int(r.clean_pred), int(r.adv_pred)
    skipped_by = str(getattr(r, "skipped_by", "") or "")
    rec: dict[str, Any] = {
        "model": str(r.model), "attack": str(r.base), "shown_as": str(r.attack), "eps": eps_label(eps),
        "eps_v": eps if math.isfinite(eps) else None, "index": index, "label": label,
        "label_name": classes[label] if label < len(classes) else str(label), "clean_pred": clean_pred,
        "adv_pred": adv_pred, "broken": bool(r.broken), "attacked": bool(r.attacked),
        "skipped_by": skipped_by,
        "norm": float(r.norm) if np.isfinite(r.norm) else None, "clean_img": None, "pictures": None,
        "from": "", "why": "",
    }
    if cell is None:
        rec["why"] = "no explorer images stored for this cell"
        return rec
    rec["clean_img"] = cell.clean(index)
    pictures = cell.pictures(index, eps)
    upstream = images.get((str(r.model), skipped_by)) if skipped_by else None
    if pictures is None and upstream is not None:  # cascade: the earlier attack's example counts here
        pictures = upstream.pictures(index, eps)
        rec["from"] = skipped_by if pictures is not None else ""
    rec["pictures"] = pictures
    if pictures is not None and not rec["attacked"] and not rec["from"] and clean_pred == label:
        rec["why"] = "broken at a smaller budget and not attacked again: that example is shown"
    if pictures is None:
        rec["why"] = ("misclassified clean: not attacked" if clean_pred != label else
                      f"broken earlier by {skipped_by} (its image is not stored)" if skipped_by else
                      "no adversarial example stored at this budget")
    return rec
