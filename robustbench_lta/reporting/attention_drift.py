"""Attention drift under attack, from attention.parquet: how far the maps move as eps grows.

Per model, attack, level and eps: the mean Jensen-Shannon divergence between clean and adversarial
maps (95% t-interval) and, where the dataset has object boxes, the share of attention mass inside
the box, clean vs adversarial. One encoding per meaning on the page: colour = model, marker =
attention level, solid/dotted line = adversarial/clean box mass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .attention_figures import MARKERS
from .pages import new_page


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
        "Bottom: share of attention mass inside the object box, adversarial (solid line, filled markers) "
        "vs clean (dotted line, open markers; same samples)."
        if has_box
        else "The dataset has no object boxes, so there is no box-mass row."
    )
    if left_out:
        note += f" Not drawn: {', '.join(left_out)} (all attacks are in attention_drift.csv)."
    fig = new_page(
        title,
        "Attention drift vs eps: mean over the samples the attack ran on at that eps (n beside each "
        "point: later budgets average fewer, still-unbroken samples), 95% t-interval; colour = model, "
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
            # one encoding per meaning: the level is the marker only; line style means clean vs
            # adversarial in the box-mass row, so here every line is solid
            ls = "-" if len(x) >= 3 else "none"
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
    """One legend for the page, right of the panels: colour = model, marker = level, solid/dotted line =
    adversarial/clean box mass (each encoding has one meaning)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[m], lw=2.5, label=m) for m in sorted(set(tab["model"]))]
    for lev in sorted(set(int(v) for v in tab["level"])):  # markers alone: the level, nothing else
        handles.append(Line2D([], [], color="0.35", ls="none", marker=MARKERS[lev % len(MARKERS)], ms=6,
                              label=f"level L{lev}"))
    if has_box:  # lines alone: adversarial vs clean, nothing else
        handles.append(Line2D([], [], color="0.35", ls="-", lw=1.8, label="box mass: adversarial"))
        handles.append(Line2D([], [], color="0.35", ls=":", lw=1.8, label="box mass: clean"))
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.815, 0.83),
        fontsize=8.5,
        frameon=True,
        title="legend",
        title_fontsize=9,
    )
