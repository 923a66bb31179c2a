"""Robustness curves (robust accuracy vs eps, one panel per bounded attack and per-norm worst case)
and the per-class robust-accuracy heatmap.

Curves plot eps in pixel units (eps * 255) with 95% Wilson bands from each cell's n and robust
accuracy; the legend gives each model's budget range and, for three or more budgets, the area under
the curve normalised by that range (the mean robust accuracy over it: areas over different ranges
do not compare). An attack with fewer than three budgets is drawn as points with interval bars, not
joined by a line. ``kind="conditional"`` plots robust accuracy among clean-correct images
(robust / clean: separates robustness from accuracy). Unbounded attacks (eps = inf) have no curve;
the tables report their median perturbation norm instead.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import CASCADE_SUFFIX
from .load import (
    EPS_TOL,
    NORM_NAMES,
    WORST_CASE,
    ResultsBundle,
    eps_grid,
    eps_label,
    headline_eps,
    norm_attacks,
    wilson,
    worst_case_per_sample,
)
from .pages import new_page

PANELS_PER_PAGE = 6
MIN_LINE_POINTS = 3  # fewer budgets: points, no line and no area under the curve


def curve_panels(bundle: ResultsBundle) -> list[tuple[str, str, pd.DataFrame]]:
    """(attack, norm, rows) for every bounded attack, then the worst case per norm."""
    s = bundle.summary
    bounded = s[np.isfinite(s["eps"].astype(float))]
    panels = []
    key = bounded[bounded["attack"] != WORST_CASE][["attack", "norm"]].drop_duplicates()
    for attack, norm in sorted(key.itertuples(index=False), key=lambda t: (str(t[1]), str(t[0]))):
        panels.append(
            (str(attack), str(norm), bounded[(bounded["attack"] == attack) & (bounded["norm"] == norm)])
        )
    wc = bounded[bounded["attack"] == WORST_CASE]
    for norm in sorted(set(wc["norm"].astype(str))):
        panels.append((WORST_CASE, norm, wc[wc["norm"] == norm]))
    return panels


def normalised_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under y(x) divided by the x range (mean of y over the range); y itself if one point."""
    order = np.argsort(x)
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return math.nan
    if len(x) == 1 or x[-1] - x[0] <= 0:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def curves_table(bundle: ResultsBundle) -> pd.DataFrame:
    """Area-under-curve (mean robust accuracy over the swept eps range) per panel and model."""
    rows = []
    for attack, norm, df in curve_panels(bundle):
        for m in bundle.models:
            d = df[(df["model"] == m) & (df["status"] == "ok")]
            if d.empty:
                continue
            x = d["eps"].to_numpy() * 255
            enough = len(d) >= MIN_LINE_POINTS
            rows.append(
                {
                    "attack": attack,
                    "norm": norm,
                    "model": m,
                    "eps_range": (f"{eps_label(d['eps'].min())} .. {eps_label(d['eps'].max())}"),
                    "points": len(d),
                    "auc_mean_robust_acc_%": (
                        round(100 * normalised_auc(x, d["robust_acc"].to_numpy()), 2) if enough else np.nan
                    ),
                    "auc_mean_conditional_%": (
                        round(100 * normalised_auc(x, _conditional(d)), 2) if enough else np.nan
                    ),
                }
            )
    return pd.DataFrame(rows)


def _conditional(d: pd.DataFrame) -> np.ndarray:
    """Robust accuracy among clean-correct samples per row: robust / clean (same n), NaN if none correct."""
    clean = d["clean_acc"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(clean > 0, d["robust_acc"].to_numpy(float) / clean, np.nan)


def _range(x: np.ndarray) -> str:
    lo, hi = float(np.min(x)), float(np.max(x))
    return f"{lo:.3g}/255" if hi - lo < 1e-9 else f"{lo:.3g}-{hi:.3g}/255"


def incomplete_budgets(summary: pd.DataFrame, model: str, norm: str) -> dict[float, list[str]]:
    """Budgets of ``model``'s worst case at which some of its attacks of ``norm`` did not run.

    The worst case at eps counts every attack that broke a sample at eps or below, but an attack
    that ran only at 8/255 (AutoAttack, typically) strengthens it only there: a drop between two
    budgets can be where the attack set changes, not the model. Returns ``{eps: [attacks missing]}``
    (eps > 0 only; a cascade row counts as its attack).
    """
    rows = summary[(summary["model"] == model) & (summary["norm"] == norm) & (summary["status"] == "ok")
                   & (summary["attack"] != WORST_CASE) & np.isfinite(summary["eps"].astype(float))]
    if rows.empty:
        return {}
    names = rows["attack"].astype(str).str.removesuffix(CASCADE_SUFFIX)
    every = set(names)
    ran: dict[float, set[str]] = {}
    for eps, name in zip(rows["eps"].astype(float), names, strict=True):
        ran.setdefault(round(eps, 9), set()).add(name)
    return {eps: sorted(every - got) for eps, got in sorted(ran.items()) if eps > 0 and every - got}


def _panel(
    ax: Any,
    attack: str,
    norm: str,
    df: pd.DataFrame,
    bundle: ResultsBundle,
    palette: dict[str, Any],
    kind: str = "robust",
) -> None:
    notes: list[str] = []
    partial_missing: set[str] = set()
    # the attacks each model's worst case was really taken over: in the title if all share them
    over = {
        m: ", ".join(norm_attacks(bundle.summary[bundle.summary["model"] == m], norm))
        for m in bundle.models
        if attack == WORST_CASE and (df["model"] == m).any()
    }
    for m in bundle.models:
        d = df[df["model"] == m].sort_values("eps")
        if d.empty:
            continue
        bad = d[d["status"] != "ok"]
        if not bad.empty:
            eps_txt = ", ".join(eps_label(e).replace("/255", "") for e in bad["eps"])
            notes.append(
                f"{m}: {'/'.join(sorted(set(bad['status'])))} at "
                f"{textwrap.shorten(eps_txt, 28, placeholder='...')}"
            )
            # mark where a point is missing, on the x axis in the model's colour
            xb = bad["eps"].to_numpy(float) * 255
            ax.plot(
                xb[np.isfinite(xb)],
                np.zeros(np.isfinite(xb).sum()),
                ls="none",
                marker="x",
                ms=7,
                mew=2,
                color=palette[m],
                clip_on=False,
            )
        d = d[(d["status"] == "ok") & np.isfinite(d["robust_acc"].astype(float))]
        if d.empty:
            continue
        x = d["eps"].to_numpy(float) * 255
        n = d["n"].to_numpy(float)
        if kind == "conditional":
            y = _conditional(d)
            n = np.round(d["clean_acc"].to_numpy(float) * n)  # the clean-correct samples
        else:
            y = d["robust_acc"].to_numpy(float)
        band = np.array(
            [wilson(a * k, k) if np.isfinite(a) else (np.nan, np.nan) for a, k in zip(y, n, strict=True)]
        )
        colour = palette[m]
        who = m if attack != WORST_CASE or len(set(over.values())) <= 1 else f"{m} (over {over[m]})"
        partial = incomplete_budgets(bundle.summary, m, norm) if attack == WORST_CASE else {}
        if partial:
            # hollow markers where the worst case could not take every attack at that budget
            at = np.array([any(abs(v / 255 - e) <= 1e-9 for e in partial) for v in x])
            ax.plot(x[at], 100 * y[at], ls="none", marker="o", ms=8, mfc="white", mew=1.5, color=colour,
                    zorder=5)
            partial_missing.update(a for names in partial.values() for a in names)
        if len(x) >= MIN_LINE_POINTS:
            label = f"{who}: AUC {100 * normalised_auc(x, y):.1f}% over {_range(x)}"
            ax.plot(x, 100 * y, marker="o", ms=4, lw=1.8, color=colour, label=label)
            ax.fill_between(x, 100 * band[:, 0], 100 * band[:, 1], color=colour, alpha=0.18, lw=0)
        else:  # one or two budgets: no line to interpolate between them, no area
            label = f"{who}: points at {', '.join(f'{v:.3g}' for v in x)}/255 (no AUC)"
            err = np.abs(100 * band.T - 100 * y)
            ax.errorbar(
                x, 100 * y, yerr=err, ls="none", marker="o", ms=5, capsize=3, color=colour, label=label
            )
    if partial_missing:  # one legend entry for the open markers: which attacks are missing there
        missing = textwrap.shorten(", ".join(sorted(partial_missing)), 40, placeholder="...")
        ax.plot([], [], ls="none", marker="o", ms=8, mfc="white", mew=1.5, color="0.35",
                label=f"open: not every attack ran ({missing})")
    shared = next(iter(over.values())) if len(set(over.values())) == 1 else "each model's attacks"
    title = (
        "\n".join(
            textwrap.wrap(
                f"worst case, {NORM_NAMES.get(norm, norm)} (over {shared})", 48, break_on_hyphens=False
            )
        )
        if attack == WORST_CASE
        else f"{attack} ({NORM_NAMES.get(norm, norm)})"
    )
    ax.set_title(title, fontweight="bold" if attack == WORST_CASE else None)
    ax.set_xlabel("eps (x/255)")
    ax.set_ylabel("robust acc. among clean-correct (%)" if kind == "conditional" else "robust accuracy (%)")
    ax.set_ylim(-2, 102)
    xs = df["eps"].to_numpy(float) * 255
    xs = xs[np.isfinite(xs)]
    if len(xs):  # a single eps must not give a +-0.05 axis; always show from 0
        ax.set_xlim(min(0.0, xs.min()) - 0.03 * max(xs.max(), 1), max(xs.max(), 1.0) * 1.03 + 0.1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=True, framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no finished cell", ha="center", va="center", transform=ax.transAxes, color="0.4")
    if notes:
        ax.text(
            0.02,
            0.07,
            "\n".join(
                ["not finished (x):"] + notes[:4] + ([f"... {len(notes) - 4} more"] if len(notes) > 4 else [])
            ),
            transform=ax.transAxes,
            fontsize=7,
            color="#b22222",
            va="bottom",
            ha="left",
            wrap=True,
        )


def robustness_curve_pages(
    bundle: ResultsBundle, palette: dict[str, Any], title: str, kind: str = "robust"
) -> list[Figure]:
    """Figure pages with up to six panels each; ``kind``: robust, conditional or both (robust first)."""
    panels = curve_panels(bundle)
    if not panels:
        return []
    kinds = ["robust", "conditional"] if kind == "both" else [kind]
    figs = []
    pages = [(kd, k) for kd in kinds for k in range(0, len(panels), PANELS_PER_PAGE)]
    for page_no, (kd, k) in enumerate(pages):
        chunk = panels[k : k + PANELS_PER_PAGE]
        suffix = f" ({page_no + 1}/{len(pages)})" if len(pages) > 1 else ""
        what = (
            "Robust accuracy among clean-correct images (robust / clean; separates robustness from accuracy)"
            if kd == "conditional"
            else "Robust accuracy"
        )
        fig = new_page(
            f"{title}{suffix}",
            f"{what} vs eps (pixel units); shaded or bars: 95% Wilson interval; AUC = mean over the "
            "eps range in the legend (trapezoid; only for >= 3 budgets, fewer are drawn as points). "
            "Unbounded attacks: see Tables.",
        )
        ncols = 3 if len(chunk) in (3, 5, 6) else 2 if len(chunk) > 1 else 1
        nrows = math.ceil(len(chunk) / ncols)
        # one row: keep the panels' aspect near 4:3 instead of stretching them over the whole page
        bottom = 0.08 if nrows > 1 else max(0.08, 0.82 - (0.92 / ncols) * 11.69 / 8.27 * 0.75)
        gs = fig.add_gridspec(
            nrows, ncols, left=0.06, right=0.98, top=0.82, bottom=bottom, hspace=0.38, wspace=0.22
        )
        for i, (attack, norm, df) in enumerate(chunk):
            ax = fig.add_subplot(gs[i // ncols, i % ncols])
            _panel(ax, attack, norm, df, bundle, palette, kd)
        figs.append(fig)
    return figs


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
            fmt=".0f",
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
