"""Attention under attack: map grids from ``attention/MODEL.npz`` and drift curves from attention.parquet.

The grid shows images the model classified correctly on clean input (the first of the stored ones,
in stored order; how many were available is said on the page), since maps of a wrong prediction
say little about attention under attack. Per image: the input and each level's clean map overlaid,
then the adversarial image and its maps at up to three eps (smallest nonzero, middle, largest),
with true/predicted labels. Maps are upsampled bilinearly to the image size and share one colour
scale per image and level so clean and adversarial maps compare directly. The drift page plots the
mean Jensen-Shannon divergence between clean and adversarial maps vs eps (95% t-interval), and,
where the dataset has object boxes, the share of attention mass inside the box, clean vs adversarial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .load import eps_label
from .pages import new_page

MAX_IMAGES = 6
CMAP = "jet"
ALPHA = 0.55
LINESTYLES = ["-", "--", "-.", ":"]
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


def pick_eps(eps: np.ndarray) -> list[int]:
    """Indices of up to three eps to show: smallest nonzero, middle, largest."""
    nz = [i for i, e in enumerate(eps) if e > 0]
    if not nz:
        return []
    if len(nz) <= 3:
        return nz
    return [nz[0], nz[len(nz) // 2], nz[-1]]


def map_grid_page(model: str, path: Path, classes: list[str] | None, title: str) -> Figure:
    """One page: rows = stored images, columns = input, clean maps, then adversarial image + maps per eps."""
    data = load_npz(path)
    levels = _levels(data)
    rows, picked = pick_clean_correct(data)
    k = len(rows)
    eps = np.asarray(data.get("eps", np.array([])), dtype=float)
    chosen = pick_eps(eps) if "adv_images" in data else []
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
        f"{model}: attention maps (overlay, {CMAP}; one colour scale per image and level) "
        f"on clean inputs and under {attack}; title = true -> predicted label (red: wrong). {picked}",
    )
    ncol, nrow = len(cols), max(k, 1)
    top, bottom, left, right = 0.79, 0.03, 0.02, 0.98  # below a three-line subtitle
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
    for r_shown, r in enumerate(rows):
        img = _img(data["images"][r])
        H, W = img.shape[:2]
        vmax = {
            j: max(
                float(np.max(data[f"clean_level{j}"][r])),
                *(float(np.max(data[f"adv_level{j}"][e][r])) for e in chosen),
            )
            or 1.0
            for j in levels
        }
        for c, (kind, e, j) in enumerate(cols):
            ax = fig.add_subplot(gs[r_shown, c])
            ax.set_xticks([])
            ax.set_yticks([])
            base = img if kind != "adv" else _img(data["adv_images"][e][r])
            ax.imshow(base, interpolation="nearest")
            if j is not None:
                m = data[f"clean_level{j}"][r] if kind == "clean" else data[f"adv_level{j}"][e][r]
                ax.imshow(
                    upsample_bilinear(m, (H, W)),
                    cmap=CMAP,
                    alpha=ALPHA,
                    vmin=0,
                    vmax=vmax[j],
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
    return fig


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


def _mean_ci(v: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval (Student t quantile from scipy if available, else normal)."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if len(v) < 2:
        return (m, m, m)
    try:
        from scipy.stats import t

        q = float(t.ppf(0.975, len(v) - 1))
    except ImportError:  # pragma: no cover - scipy is a dependency of scikit-learn
        q = 1.96
    half = q * float(v.std(ddof=1)) / math.sqrt(len(v))
    return (m, m - half, m + half)


def drift_table(att: pd.DataFrame) -> pd.DataFrame:
    """Per model, attack, level and eps: mean JS divergence and box mass (clean, adversarial) with 95% CIs."""
    rows = []
    finite = att[np.isfinite(att["eps"].astype(float))]
    for (m, a, lev, e), g in finite.groupby(["model", "attack", "level", "eps"], sort=True):
        js = _mean_ci(g["js_divergence"].to_numpy(float))
        bc = _mean_ci(g["box_mass_clean"].to_numpy(float)) if "box_mass_clean" in g else (math.nan,) * 3
        ba = _mean_ci(g["box_mass_adv"].to_numpy(float)) if "box_mass_adv" in g else (math.nan,) * 3
        rows.append(
            {
                "model": m,
                "attack": a,
                "level": int(lev),
                "eps": float(e),
                "n": len(g),
                "js_mean": js[0],
                "js_lo": js[1],
                "js_hi": js[2],
                "box_clean_mean": bc[0],
                "box_clean_lo": bc[1],
                "box_clean_hi": bc[2],
                "box_adv_mean": ba[0],
                "box_adv_lo": ba[1],
                "box_adv_hi": ba[2],
            }
        )
    return pd.DataFrame(rows)


def _drift_attacks(tab: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(shown, left out): at most three panels, PGD and FGSM first, then the attacks with most eps."""
    n_eps = tab.groupby("attack")["eps"].nunique()
    order = sorted(
        n_eps.index,
        key=lambda a: (0 if "pgd" in a else 1 if "fgsm" in a else 2, -int(n_eps[a]), a),
    )
    return order[:3], order[3:]


def drift_page(tab: pd.DataFrame, palette: dict[str, Any], title: str) -> Figure:
    """JS divergence vs eps (top row) and box mass clean vs adversarial vs eps (bottom row, if boxes)."""
    attacks, left_out = _drift_attacks(tab)
    has_box = bool(np.isfinite(tab["box_adv_mean"].to_numpy(float)).any())
    note = (
        "Bottom: share of attention mass inside the object box, adversarial (solid) vs clean (dotted, "
        "same samples)."
        if has_box
        else "The dataset has no object boxes, so there is no box-mass row."
    )
    if left_out:
        note += f" Not drawn: {', '.join(left_out)} (all attacks are in attention_drift.csv)."
    fig = new_page(
        title,
        "Attention drift vs eps: mean over the samples the attack ran on at that eps (n beside each "
        "point: later budgets average fewer, still-unbroken samples), 95% t-interval; line style and "
        "marker = attention level (L0 = earliest); fewer than 3 budgets: points only. " + note,
    )
    nrows = 2 if has_box else 1
    gs = fig.add_gridspec(
        nrows,
        len(attacks),
        left=0.07,
        right=0.80,
        top=0.76,
        bottom=0.08 if has_box else 0.36,
        hspace=0.42,
        wspace=0.38,
    )
    for c, attack in enumerate(attacks):
        d = tab[tab["attack"] == attack]
        ax = fig.add_subplot(gs[0, c])
        # n: the samples behind each point (the same for every level), written above the highest band
        for (m, e), g in d.groupby(["model", "eps"], sort=True):
            top = float(np.nanmax(g["js_hi"].to_numpy(float))) if np.isfinite(g["js_hi"]).any() else 0.0
            ax.annotate(f"n={int(g['n'].iloc[0])}", (float(e) * 255, top), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=6.5, color=palette[m])
        for (m, lev), g in d.groupby(["model", "level"], sort=True):
            g = g.sort_values("eps")
            x = g["eps"].to_numpy() * 255
            ls = LINESTYLES[int(lev) % len(LINESTYLES)] if len(x) >= 3 else "none"
            ax.plot(
                x,
                g["js_mean"],
                ls=ls,
                marker=MARKERS[int(lev) % len(MARKERS)],
                ms=4,
                color=palette[m],
                label=f"{m} L{lev}",
            )
            if len(x) >= 3:
                ax.fill_between(x, g["js_lo"], g["js_hi"], color=palette[m], alpha=0.15, lw=0)
            else:  # points: the interval as bars
                mean = g["js_mean"].to_numpy(float)
                err = np.abs(np.vstack([g["js_lo"].to_numpy(float), g["js_hi"].to_numpy(float)]) - mean)
                ax.errorbar(x, mean, yerr=err, ls="none", capsize=3, color=palette[m], alpha=0.6)
        ax.set_xlim(-0.03 * max(float(d["eps"].max()) * 255, 1), max(float(d["eps"].max()) * 255, 1) * 1.06)
        ax.set_title(f"JS divergence, {attack}", pad=12)
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel("JS divergence (bits)")
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.12)  # room for the n labels
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if has_box:
            ax2 = fig.add_subplot(gs[1, c])
            for (m, lev), g in d.groupby(["model", "level"], sort=True):
                g = g.sort_values("eps")
                if not np.isfinite(g["box_adv_mean"]).any():
                    continue
                x = g["eps"].to_numpy() * 255
                mk = MARKERS[int(lev) % len(MARKERS)]
                ax2.plot(
                    x,
                    100 * g["box_adv_mean"],
                    ls="-",
                    marker=mk,
                    ms=4,
                    color=palette[m],
                    label=f"{m} L{lev} adversarial",
                )
                ax2.fill_between(
                    x, 100 * g["box_adv_lo"], 100 * g["box_adv_hi"], color=palette[m], alpha=0.12, lw=0
                )
                ax2.plot(
                    x,
                    100 * g["box_clean_mean"],
                    ls=":",
                    marker=mk,
                    ms=4,
                    mfc="white",
                    color=palette[m],
                    alpha=0.8,
                    label=f"{m} L{lev} clean",
                )
            ax2.set_title(f"box mass, {attack}")
            ax2.set_xlabel("eps (x/255)")
            ax2.set_ylabel("mass inside box (%)")
    _drift_legend(fig, tab, palette, has_box)
    return fig


def _drift_legend(fig: Figure, tab: pd.DataFrame, palette: dict[str, Any], has_box: bool) -> None:
    """One legend for the page, right of the panels: colour = model, marker/line = level, solid/dotted."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[m], lw=2.5, label=m) for m in sorted(set(tab["model"]))]
    for lev in sorted(set(int(v) for v in tab["level"])):
        handles.append(
            Line2D(
                [],
                [],
                color="0.35",
                ls=LINESTYLES[lev % len(LINESTYLES)],
                marker=MARKERS[lev % len(MARKERS)],
                ms=5,
                label=f"level L{lev}",
            )
        )
    if has_box:
        handles.append(Line2D([], [], color="0.35", ls="-", marker="o", ms=5, label="box mass: adversarial"))
        handles.append(
            Line2D([], [], color="0.35", ls=":", marker="o", mfc="white", ms=5, label="box mass: clean")
        )
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.815, 0.83),
        fontsize=8.5,
        frameon=True,
        title="legend",
        title_fontsize=9,
    )
