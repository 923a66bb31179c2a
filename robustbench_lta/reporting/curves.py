"""Robustness curves: robust accuracy vs eps, one panel per bounded attack and per-norm worst case.

Curves plot eps in pixel units (eps * 255) with 95% Wilson bands from each cell's n and robust
accuracy; the legend (below each panel, where it covers no point) gives each model's budget range
and, for three or more budgets, the area under the curve normalised by that range (the mean robust
accuracy over it: areas over different ranges do not compare). Attacks run at one or two budgets
(AutoAttack, Square) are points, not curves: they share one panel per norm, marker = attack,
colour = model. ``kind="conditional"`` plots robust accuracy among clean-correct images (robust /
clean: separates robustness from accuracy). Unbounded attacks (eps = inf) have no curve; the tables
report their median perturbation norm instead. The per-class view is in per_class.py.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import CASCADE_SUFFIX, STATUSES_NOT_OK
from .curve_points import MIN_LINE_POINTS, conditional, few_panel, legend_below, values
from .load import (
    NORM_NAMES,
    WORST_CASE,
    ResultsBundle,
    eps_label,
    norm_attacks,
)
from .pages import new_page

PANELS_PER_PAGE = 6


def curve_panels(bundle: ResultsBundle) -> list[tuple[str, str, pd.DataFrame]]:
    """(attack, norm, rows) for every bounded attack, then the worst case per norm.

    Under cascade accounting an attack's rows are ``<attack> (cascade)`` where it skipped samples an
    earlier attack broke, and keep the attack's name where it skipped none (eps 0, typically): there
    the two figures are the same number, so both kinds of row form one curve, named as the cascade.
    """
    s = bundle.summary
    bounded = s[np.isfinite(s["eps"].astype(float))]
    panels = []
    per = bounded[bounded["attack"] != WORST_CASE]
    base = per["attack"].astype(str).str.removesuffix(CASCADE_SUFFIX)
    keys = set(zip(base, per["norm"].astype(str), strict=True))
    for name, norm in sorted(keys, key=lambda t: (t[1], t[0])):
        rows = per[(base == name) & (per["norm"] == norm)]
        cascade = (rows["attack"].astype(str) != name).any()
        label = name + CASCADE_SUFFIX if cascade else name
        panels.append((label, norm, rows.assign(attack=label)))
    wc = bounded[bounded["attack"] == WORST_CASE]
    for norm in sorted(set(wc["norm"].astype(str))):
        panels.append((WORST_CASE, norm, wc[wc["norm"] == norm]))
    return panels


def few_budgets(df: pd.DataFrame) -> bool:
    """Whether an attack ran at fewer than :data:`MIN_LINE_POINTS` budgets for every model.

    Such an attack (AutoAttack or Square at one or two budgets) is a few points, not a curve: it
    shares one panel with the others like it instead of taking a whole panel.
    """
    return bool(df.groupby("model")["eps"].nunique().max() < MIN_LINE_POINTS) if len(df) else False


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
                        round(100 * normalised_auc(x, conditional(d)), 2) if enough else np.nan
                    ),
                }
            )
    return pd.DataFrame(rows)


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
        bad = d[d["status"].isin(STATUSES_NOT_OK)]  # not-applicable: no curve, no mark
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
        x, y, band = values(d, kind)
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
                f"worst case, {NORM_NAMES.get(norm, norm)} (over {shared})", 40, break_on_hyphens=False
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
        legend_below(ax)
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


def page_panels(bundle: ResultsBundle) -> list[tuple[str, str, Any]]:
    """What the curve pages draw, in order: one panel per attack with enough budgets for a curve, one
    shared panel per norm for the attacks with one or two (``("few", norm, items)``), the worst cases."""
    panels = curve_panels(bundle)
    few: dict[str, list[tuple[str, str, pd.DataFrame]]] = {}
    out: list[tuple[str, str, Any]] = []
    for attack, norm, df in panels:
        if attack != WORST_CASE and few_budgets(df):
            few.setdefault(norm, []).append((attack, norm, df))
        elif attack != WORST_CASE:
            out.append((attack, norm, df))
    out += [("few", norm, items) for norm, items in sorted(few.items())]
    return out + [(a, n, df) for a, n, df in panels if a == WORST_CASE]


def robustness_curve_pages(
    bundle: ResultsBundle, palette: dict[str, Any], title: str, kind: str = "robust"
) -> list[Figure]:
    """Figure pages with up to six panels each; ``kind``: robust, conditional or both (robust first)."""
    panels = page_panels(bundle)
    if not panels:
        return []
    kinds = ["robust", "conditional"] if kind == "both" else [kind]
    s = bundle.summary
    finite = s["eps"].astype(float)
    x_max = {n: float(finite[(s["norm"] == n) & np.isfinite(finite)].max()) * 255 for n in set(s["norm"])}
    figs = []
    # a legend line per model under each panel: past three models two rows of panels and their legends
    # do not fit one page, so such pages hold one row
    per_page = PANELS_PER_PAGE if len(bundle.models) <= 3 else 3
    pages = [(kd, k) for kd in kinds for k in range(0, len(panels), per_page)]
    for page_no, (kd, k) in enumerate(pages):
        chunk = panels[k : k + per_page]
        suffix = f" ({page_no + 1}/{len(pages)})" if len(pages) > 1 else ""
        what = (
            "Robust accuracy among clean-correct images (robust / clean; separates robustness from accuracy)"
            if kd == "conditional"
            else "Robust accuracy"
        )
        fig = new_page(
            f"{title}{suffix}",
            f"{what} vs eps (pixel units); shaded or bars: 95% Wilson interval; AUC = mean over the "
            "eps range in the legend (trapezoid; only for >= 3 budgets). Attacks run at one or two budgets "
            "share one panel. Unbounded attacks: see Tables.",
        )
        ncols = 3 if len(chunk) in (3, 5, 6) else 2 if len(chunk) > 1 else 1
        nrows = math.ceil(len(chunk) / ncols)
        # one row: keep the panels' aspect near 4:3 instead of stretching them over the whole page
        bottom = 0.17 if nrows > 1 else max(0.17, 0.82 - (0.92 / ncols) * 11.69 / 8.27 * 0.75)
        gs = fig.add_gridspec(
            nrows, ncols, left=0.06, right=0.98, top=0.82, bottom=bottom, hspace=0.78, wspace=0.22
        )
        for i, (attack, norm, df) in enumerate(chunk):
            ax = fig.add_subplot(gs[i // ncols, i % ncols])
            if attack == "few":
                few_panel(ax, df, bundle, palette, kd, x_max.get(norm, 8.0))
            else:
                _panel(ax, attack, norm, df, bundle, palette, kd)
        figs.append(fig)
    return figs
