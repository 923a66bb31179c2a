"""Attention under attack: map grids from ``attention/MODEL.npz`` (the drift page: attention_drift.py).

The grid shows images the model classified correctly on clean input (the first of the stored ones,
in stored order; how many were available is said on the page), since maps of a wrong prediction
say little about attention under attack. Per image: the input and each level's clean map overlaid,
then the adversarial image and its maps at up to three eps (smallest nonzero, middle, largest),
with true/predicted labels, under the strongest L-inf attack the sweep ran. Maps are upsampled
bilinearly to the image size, divided by their mean (1 = uniform attention, comparable across
levels of different resolution) and drawn on one colour scale for the whole page, with a colour bar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..plugins.strength import strongest_family
from ..results import figure_eps_indices
from .load import eps_label
from .pages import new_page

MAX_IMAGES = 6
CMAP = "jet"
ALPHA = 0.55
MARKERS = ["o", "s", "^", "D"]


def upsample_bilinear(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` (H, W), pixel centres aligned (align_corners=False)."""
    h, w = m.shape
    H, W = size
    if (h, w) == (H, W):
        return m.astype(float)
    ys = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xs = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    m = m.astype(float)
    top = m[y0][:, x0] * (1 - wx) + m[y0][:, x1] * wx
    bot = m[y1][:, x0] * (1 - wx) + m[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def _img(x: np.ndarray) -> np.ndarray:
    """(3,H,W) or (1,H,W) in [0,1] -> (H,W,3) for imshow."""
    x = np.clip(np.asarray(x, dtype=float), 0, 1)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.transpose(x, (1, 2, 0))
    if x.ndim == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return x


#: what a sweep stores in attention/MODEL.npz (engine/model_pass.py), beside clean_levelJ/adv_levelJ
ATTENTION_KEYS = frozenset({"attack", "index", "labels", "images", "eps", "clean_pred", "adv_images",
                            "adv_pred", "boxes", "selection", "key"})
_REQUIRED_KEYS = ("images", "labels")
_LEVEL_KEY = re.compile(r"(clean|adv)_level\d+")


def attention_keys_problem(path: Path, keys: Iterable[str]) -> str | None:
    """One sentence naming ``path`` and what is wrong with its keys, or None when they are a sweep's.

    Unknown keys mean the file was not written by a sweep of this version (or was edited): drawing
    what happens to be there, or dropping the page, would both say nothing about it.
    """
    keys = set(keys)
    unexpected = sorted(k for k in keys if k not in ATTENTION_KEYS and not _LEVEL_KEY.fullmatch(k))
    missing = [k for k in _REQUIRED_KEYS if k not in keys]
    if not any(k.startswith("clean_level") for k in keys):
        missing.append("clean_level0")
    if not unexpected and not missing:
        return None
    parts = ([f"unexpected keys {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}"]
             if unexpected else []) + ([f"missing {', '.join(missing)}"] if missing else [])
    return (f"{path} is not an attention-maps file of a sweep ({'; '.join(parts)}): delete it to build the "
            "report without that model's attention maps, or re-run the sweep into a new folder")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        problem = attention_keys_problem(path, z.files)
        if problem:
            raise ValueError(problem)
        return {k: z[k] for k in z.files}


def _levels(data: dict[str, np.ndarray]) -> list[int]:
    return sorted(int(k[len("clean_level") :]) for k in data if k.startswith("clean_level"))


def map_grid_page(model: str, path: Path, classes: list[str] | None, title: str,
                  strongest: str | None = None) -> Figure:
    """One page: rows = stored images, columns = input, clean maps, then adversarial image + maps per eps.

    ``strongest``: the strongest L-inf attack the sweep ran (:func:`figure_choice`); a figure stored
    under another one (by an older sweep) says so instead of passing for the strongest.
    """
    data = load_npz(path)
    levels = _levels(data)
    rows, picked = pick_clean_correct(data)
    k = len(rows)
    eps = np.asarray(data.get("eps", np.array([])), dtype=float)
    chosen = figure_eps_indices(eps) if "adv_images" in data else []
    if len(levels) >= 3:
        chosen = chosen[-2:]  # the middle and the largest eps: where attention moves most
    attack = str(data.get("attack", np.array("attack")))

    def name(c: int) -> str:
        return classes[int(c)] if classes and 0 <= int(c) < len(classes) else str(int(c))

    cols = [("input", None, None)] + [("clean", None, j) for j in levels]
    for e in chosen:
        cols += [("adv", e, None)] + [("adv", e, j) for j in levels]
    fig = new_page(
        title,
        f"{model}: attention maps on clean inputs and under {attack}{_which(attack, strongest)} "
        f"(overlay, {CMAP}; each map divided by its mean, so 1 = uniform attention, on one colour scale for "
        f"every panel: colour bar right); title = true -> predicted label (red: wrong). {picked}",
    )
    ncol, nrow = len(cols), max(k, 1)
    top, bottom, left, right = 0.79, 0.03, 0.02, 0.91  # below a three-line subtitle; colour bar right
    cell = min((top - bottom) * 8.27 / nrow, (right - left) * 11.69 / ncol)
    gs = fig.add_gridspec(
        nrow,
        ncol,
        left=left,
        right=left + cell * ncol / 11.69,
        top=top,
        bottom=top - cell * nrow / 8.27,
        wspace=0.06,
        hspace=0.32,
    )
    labels = data["labels"]
    vmax = shared_vmax(data, rows, levels, chosen)
    for r_shown, r in enumerate(rows):
        img = _img(data["images"][r])
        H, W = img.shape[:2]
        for c, (kind, e, j) in enumerate(cols):
            ax = fig.add_subplot(gs[r_shown, c])
            ax.set_xticks([])
            ax.set_yticks([])
            base = img if kind != "adv" else _img(data["adv_images"][e][r])
            ax.imshow(base, interpolation="nearest")
            if j is not None:
                m = data[f"clean_level{j}"][r] if kind == "clean" else data[f"adv_level{j}"][e][r]
                ax.imshow(
                    upsample_bilinear(relative(m), (H, W)),
                    cmap=CMAP,
                    alpha=ALPHA,
                    vmin=0,
                    vmax=vmax,
                    interpolation="nearest",
                )
            if "boxes" in data and j is not None:
                x0, y0, x1, y1 = (float(v) for v in data["boxes"][r])
                ax.add_patch(_rect(x0, y0, x1, y1))
            head = ""
            if r_shown == 0:
                head = (
                    "input"
                    if kind == "input"
                    else f"clean L{j}"
                    if kind == "clean"
                    else f"adv {eps_label(eps[e])}"
                    if j is None
                    else f"L{j} @ {eps_label(eps[e])}"
                )
            pred_txt, colour = "", "black"
            if j is None:
                pred = data["clean_pred"][r] if kind == "input" else data["adv_pred"][e][r]
                pred_txt = f"{name(labels[r])} -> {name(pred)}"
                colour = "black" if int(pred) == int(labels[r]) else "#c62828"
            ax.set_title("\n".join(t for t in (head, pred_txt) if t), fontsize=7.5, color=colour, pad=2)
    if k == 0:
        fig.text(0.5, 0.5, f"{model}: no stored image was classified correctly on clean input.", ha="center")
    else:
        _colour_bar(fig, vmax, left + cell * ncol / 11.69 + 0.012, top - cell * nrow / 8.27, top)
    return fig


def figure_choice(manifest: dict[str, Any]) -> str | None:
    """The attack a sweep of this version draws the maps under: the strongest L-inf one it ran."""
    cands = [(str(label), str(a.get("name") or label), dict(a.get("params") or {}),
              sum(1 for e in a.get("eps") or [] if 0 < float(e) < math.inf))
             for label, a in (manifest.get("attacks") or {}).items()
             if isinstance(a, dict) and a.get("norm") == "linf" and a.get("bounded", True)]
    return strongest_family(cands)


def _which(attack: str, strongest: str | None) -> str:
    if strongest is None:
        return ""
    if attack == strongest:
        return ", the strongest L-inf attack swept"
    return (f" (stored by an older sweep; the strongest L-inf attack swept is {strongest}: re-running the "
            "sweep into the same folder redraws the maps under it)")


def relative(m: np.ndarray) -> np.ndarray:
    """A map divided by its mean: 1 = uniform attention, whatever the level's resolution (a 32x32
    softmax map's cells are 16x smaller than an 8x8 one's, so raw values do not share a scale)."""
    m = np.asarray(m, dtype=float)
    mean = float(m.mean())
    return m / mean if mean > 0 else m


def shared_vmax(data: dict[str, np.ndarray], rows: list[int], levels: list[int], chosen: list[int]) -> float:
    """The top of the one colour scale: the 99.5th percentile of every shown map (relative to its mean),
    so one hot pixel does not wash out every other panel; higher values show in the top colour."""
    values = [relative(data[f"clean_level{j}"][r]).ravel() for r in rows for j in levels]
    values += [relative(data[f"adv_level{j}"][e][r]).ravel() for r in rows for j in levels for e in chosen]
    top = float(np.percentile(np.concatenate(values), 99.5)) if values else 1.0
    return top if np.isfinite(top) and top > 0 else 1.0


def _colour_bar(fig: Figure, vmax: float, x: float, y0: float, y1: float) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes((x, y0, 0.012, max(y1 - y0, 0.1)))
    bar = fig.colorbar(ScalarMappable(Normalize(0, vmax), CMAP), cax=cax, extend="max")
    bar.set_label("attention / its mean (1 = uniform)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def pick_clean_correct(data: dict[str, np.ndarray], limit: int = MAX_IMAGES) -> tuple[list[int], str]:
    """Rows of the stored images to show: clean-correct ones, in stored order, and a sentence saying so."""
    stored = len(data["images"])
    if "clean_pred" not in data or "labels" not in data:
        rows = list(range(min(stored, limit)))
        return rows, f"Shown: the first {len(rows)} of {stored} stored images (no predictions stored)."
    correct = np.flatnonzero(np.asarray(data["clean_pred"]) == np.asarray(data["labels"]))
    rows = [int(i) for i in correct[:limit]]
    return rows, (
        f"Shown: the first {len(rows)} of the {len(correct)} clean-correct images among the {stored} "
        "stored (images stored in sample order; wrongly classified ones are left out)."
    )


def _rect(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8, ls="--")
