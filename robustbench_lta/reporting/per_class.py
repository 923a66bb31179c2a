"""Per-class robust accuracy: which classes the attacks break, from samples.parquet.

The view is taken for the worst case over the L-inf attacks when there is one (else the first
bounded attack), at up to two budgets (the middle nonzero one and the headline one), and drawn as
annotated heatmaps on one colour scale.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .curves import curve_panels
from .load import (
    EPS_TOL,
    NORM_NAMES,
    WORST_CASE,
    ResultsBundle,
    eps_grid,
    eps_label,
    headline_eps,
    norm_attacks,
    worst_case_per_sample,
)
from .pages import new_page


def main_attack(bundle: ResultsBundle) -> tuple[str, str, float] | None:
    """(attack, norm, eps) for the per-class view: worst-case linf if present, else the first bounded one."""
    s = bundle.summary
    wc = s[(s["attack"] == WORST_CASE) & (s["norm"] == "linf")]
    if not wc.empty or norm_attacks(s, "linf"):
        attack, norm = WORST_CASE, "linf"
    else:
        panels = [(a, n) for a, n, _ in curve_panels(bundle) if a != WORST_CASE]
        if not panels:
            return None
        attack, norm = panels[0]
    grid = eps_grid(s[s["norm"] == norm] if attack == WORST_CASE else s[s["attack"] == attack], norm)
    eps = headline_eps(grid, norm)
    return None if eps is None else (attack, norm, eps)


def per_class_accuracy(
    bundle: ResultsBundle, eps: float | None = None
) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """Robust accuracy per model (rows) and class (columns) for :func:`main_attack`, from samples.parquet.

    ``eps`` overrides the main attack's headline eps (it must be on the attack's grid).
    """
    if bundle.samples is None:
        return None
    choice = main_attack(bundle)
    if choice is None:
        return None
    attack, norm, eps = choice if eps is None else (choice[0], choice[1], eps)
    s = bundle.summary
    rows = {}
    counts = {}
    for m in bundle.models:
        if attack == WORST_CASE:
            grid = eps_grid(s[(s["model"] == m)], norm)
            per = worst_case_per_sample(s, bundle.samples, m, norm, grid)
            if per is None or not any(abs(e - eps) <= EPS_TOL for e in grid):
                continue
            col = next(e for e in grid if abs(e - eps) <= EPS_TOL)
            robust, labels = per[col].astype(float), per["label"]
        else:
            cell = s[(s["model"] == m) & (s["attack"] == attack) & ((s["eps"] - eps).abs() <= EPS_TOL)]
            if cell.empty or cell["status"].iloc[0] != "ok":
                continue
            sm = bundle.samples[
                (bundle.samples["model"] == m)
                & (bundle.samples["attack"] == attack)
                & ((bundle.samples["eps"] - eps).abs() <= EPS_TOL)
            ]
            if sm.empty:
                continue
            robust = ((sm["clean_pred"] == sm["label"]) & ~sm["broken"].astype(bool)).astype(float)
            labels = sm["label"]
        g = pd.DataFrame({"label": labels.to_numpy(), "robust": robust.to_numpy()}).groupby("label")["robust"]
        rows[m] = g.mean()
        counts[m] = g.size()
    if not rows:
        return None
    table = pd.DataFrame(rows).T.sort_index(axis=1)
    names = bundle.classes
    table.columns = [names[int(c)] if names and 0 <= int(c) < len(names) else str(c) for c in table.columns]
    count = pd.DataFrame(counts).T.sort_index(axis=1)
    return table, {"attack": attack, "norm": norm, "eps": eps, "counts": count}


def per_class_views(bundle: ResultsBundle) -> list[tuple[pd.DataFrame, dict[str, Any]]]:
    """Per-class tables at up to two eps of the main attack: the middle nonzero eps and the headline eps."""
    choice = main_attack(bundle)
    if choice is None or bundle.samples is None:
        return []
    attack, norm, head = choice
    s = bundle.summary
    grid = eps_grid(s[s["norm"] == norm] if attack == WORST_CASE else s[s["attack"] == attack], norm)
    pos = [e for e in grid if EPS_TOL < e <= head + EPS_TOL]
    wanted = [pos[(len(pos) - 1) // 2], head] if len(pos) > 1 else [head]
    views = []
    for e in dict.fromkeys(wanted):
        v = per_class_accuracy(bundle, e)
        if v is not None:
            views.append(v)
    return views


def per_class_page(views: list[tuple[pd.DataFrame, dict[str, Any]]], title: str) -> Figure:
    """Annotated heatmaps of per-class robust accuracy (%), one per eps, on one colour scale."""
    import seaborn as sns

    info = views[0][1]
    what = (
        "worst case over " + NORM_NAMES.get(info["norm"], info["norm"]) + " attacks"
        if info["attack"] == WORST_CASE
        else info["attack"]
    )
    n_per = info["counts"].max(axis=0)
    fig = new_page(
        title,
        f"Robust accuracy (%) per true class under the {what}, at eps "
        f"{' and '.join(eps_label(v[1]['eps']) for v in views)}; samples per class: "
        f"{int(n_per.min())}-{int(n_per.max())} (small counts are noisy).",
    )
    top = 0.84
    avail = 0.76 / len(views)
    for table, vinfo in views:
        ncls = table.shape[1]
        rotate = ncls > 12 or max(len(c) for c in table.columns) > 4
        height = min(avail - (0.13 if rotate else 0.09), 0.09 * len(table) + 0.06)
        ax = fig.add_axes((0.24, top - height, 0.70, height))
        sns.heatmap(
            100 * table,
            ax=ax,
            vmin=0,
            vmax=100,
            cmap="viridis",
            annot=ncls <= 30,
            fmt=".1f",  # one number format: percentages with one decimal throughout
            cbar_kws={"label": "robust acc. (%)", "shrink": 0.9},
            linewidths=0.5,
            linecolor="white",
        )
        ax.set_title(f"eps {eps_label(vinfo['eps'])}", loc="left", fontsize=10, fontweight="bold")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=90 if rotate else 0)
        ax.tick_params(axis="y", rotation=0)
        top -= avail
    return fig
