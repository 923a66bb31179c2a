"""Curve-page pieces shared by the panels: values with Wilson bands, legends below the axes, and the
one panel for the attacks run at one or two budgets (points, or a compact table when too many).

Attacks at one or two budgets (AutoAttack, Square) are a few numbers, not curves: a whole panel each
wasted a page. They share one panel per norm: marker = attack, colour = model, each point labelled
with its value. Past :data:`MAX_MARKERS` points the markers would hide each other, so the panel is a
table of the same numbers instead.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd

from ..results import STATUSES_NOT_OK
from .load import NORM_NAMES, ResultsBundle, eps_label, wilson

MAX_MARKERS = 10
MIN_LINE_POINTS = 3  # fewer budgets: points, no line and no area under the curve


def conditional(d: pd.DataFrame) -> np.ndarray:
    """Robust accuracy among clean-correct samples per row: robust / clean (same n), NaN if none correct."""
    clean = d["clean_acc"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(clean > 0, d["robust_acc"].to_numpy(float) / clean, np.nan)


def values(d: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eps x255, accuracy, 95% Wilson band rows) of finished cells; ``conditional``: among clean-correct."""
    x = d["eps"].to_numpy(float) * 255
    n = d["n"].to_numpy(float)
    if kind == "conditional":
        y = conditional(d)
        n = np.round(d["clean_acc"].to_numpy(float) * n)  # the clean-correct samples
    else:
        y = d["robust_acc"].to_numpy(float)
    band = np.array(
        [wilson(a * k, k) if np.isfinite(a) else (np.nan, np.nan) for a, k in zip(y, n, strict=True)]
    ).reshape(-1, 2)
    return x, y, band


def legend_below(ax: Any, handles: list[Any] | None = None) -> None:
    """The legend under the axes, below the x label: inside the axes it covered the curves' first points."""
    from matplotlib.transforms import offset_copy

    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        labels = [h.get_label() for h in handles]
    # long labels wrapped to about the panel's width, so neighbouring legends do not run into each other
    width = max(30, int(ax.get_position().width * ax.figure.get_figwidth() * 72 / 4.2))
    kw = {"handles": handles, "labels": [textwrap.fill(x, width) for x in labels]}
    # anchored a fixed 30 pt under the axes (tick labels and x label), whatever the panel's height
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-30, units="points")
    ax.legend(**kw, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, frameon=False,
              fontsize=7.5, borderaxespad=0, handletextpad=0.4, labelspacing=0.25)


FEW_MARKERS = ["D", "s", "^", "v", "P", "X", "*", "h"]


def few_panel(ax: Any, items: list[tuple[str, str, pd.DataFrame]], bundle: ResultsBundle,
              palette: dict[str, Any], kind: str = "robust", x_max: float = 8.0) -> None:
    """Attacks at one or two budgets, together: marker = attack, colour = model, bars = 95% Wilson.

    The markers at one budget are dodged sideways (the whole group spans 0.5/255) so none hides
    another; each is labelled with its value, since one point has no curve to read it from.
    """
    from matplotlib.lines import Line2D

    norm = items[0][1]
    slots = [(j, attack, m) for j, (attack, _n, df) in enumerate(items) for m in bundle.models
             if (df["model"] == m).any()]
    if sum(len(items[j][2][items[j][2]["model"] == m]) for j, _a, m in slots) > MAX_MARKERS:
        few_table(ax, items, bundle, kind)
        return
    spread = 0.5
    notes: list[str] = []
    for i, (j, attack, m) in enumerate(slots):
        d = items[j][2]
        d = d[d["model"] == m].sort_values("eps")
        bad = d[d["status"].isin(STATUSES_NOT_OK)]  # not-applicable: no curve, no mark
        if not bad.empty:
            notes.append(f"{m}, {attack}: {'/'.join(sorted(set(bad['status'])))} at "
                         + ", ".join(eps_label(e) for e in bad["eps"]))
        d = d[(d["status"] == "ok") & np.isfinite(d["robust_acc"].astype(float))]
        if d.empty:
            continue
        off = (i - (len(slots) - 1) / 2) * spread / max(len(slots) - 1, 1)
        x, y, band = values(d, kind)
        x = x + off
        ax.errorbar(x, 100 * y, yerr=np.abs(100 * band.T - 100 * y), ls="none", capsize=2.5, ms=6,
                    marker=FEW_MARKERS[j % len(FEW_MARKERS)], color=palette[m], mec="black", mew=0.5)
        for xi, yi in zip(x, y, strict=True):
            ax.annotate(f"{100 * yi:.1f}", (xi, 100 * yi), textcoords="offset points", xytext=(5, 0),
                        fontsize=6.5, va="center", color=palette[m])
    handles = [Line2D([], [], ls="none", marker=FEW_MARKERS[j % len(FEW_MARKERS)], color="0.45", mec="black",
                      mew=0.5, label=f"{a} at {', '.join(eps_label(e) for e in sorted(set(df['eps'])))}")
               for j, (a, _n, df) in enumerate(items)]
    handles += [Line2D([], [], color=palette[m], lw=2.5, label=m) for m in bundle.models
                if any((df["model"] == m).any() for _a, _n, df in items)]
    ax.set_title(f"attacks at one or two budgets ({NORM_NAMES.get(norm, norm)})")
    ax.set_xlabel("eps (x/255)")
    ax.set_ylabel("robust acc. among clean-correct (%)" if kind == "conditional" else "robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(-0.03 * max(x_max, 1), max(x_max, 1.0) * 1.12 + 0.5)  # room for the value labels
    legend_below(ax, handles)
    if notes:
        ax.text(0.02, 0.07, "\n".join(["not finished:", *notes[:4]]), transform=ax.transAxes, fontsize=7,
                color="#b22222", va="bottom", ha="left")


def few_table(ax: Any, items: list[tuple[str, str, pd.DataFrame]], bundle: ResultsBundle, kind: str) -> None:
    """The few-budget attacks as a table in the panel: rows = models, columns = attack at eps (%)."""
    cols: list[tuple[str, float]] = sorted({(a, float(e)) for a, _n, df in items for e in df["eps"]})
    models = [m for m in bundle.models if any((df["model"] == m).any() for _a, _n, df in items)]
    cells = []
    for m in models:
        row = []
        for a, e in cols:
            df = next(d for name, _n, d in items if name == a)
            hit = df[(df["model"] == m) & np.isclose(df["eps"].astype(float), e)]
            if hit.empty:
                row.append("-")
            elif hit["status"].iloc[0] != "ok":
                row.append(str(hit["status"].iloc[0]).upper())
            else:
                v = values(hit, kind)[1][0]
                row.append("" if not np.isfinite(v) else f"{100 * v:.1f}")
        cells.append(row)
    ax.axis("off")
    names = [m if len(m) <= 22 else m[:21] + "~" for m in models]  # inside the panel: never over a neighbour
    height = min(1.0, 0.11 * (len(models) + 1.5))
    tab = ax.table(cellText=[[n, *row] for n, row in zip(names, cells, strict=True)],
                   colLabels=["model", *("\n".join([a, eps_label(e)]) for a, e in cols)], cellLoc="center",
                   colWidths=[0.36] + [0.64 / len(cols)] * len(cols), bbox=(0, 1 - height, 1, height))
    tab.auto_set_font_size(False)
    tab.set_fontsize(6.0)
    what = "robust acc. among clean-correct (%)" if kind == "conditional" else "robust accuracy (%)"
    ax.set_title(f"attacks at one or two budgets ({NORM_NAMES.get(items[0][1], items[0][1])}): {what}",
                 fontsize=9)
