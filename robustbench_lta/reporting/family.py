"""Model families in a report: seed spread of the curves and two-level intervals (seeds x samples).

Models labelled ``NAME@seed<S>`` (a family folder given to ``sweep``, see training/family.py) are
grouped by ``NAME``. For every bounded attack and the per-norm worst case this section gives, per
family and eps, the mean robust accuracy over seeds, the seed standard deviation and range, and an
interval from a two-level bootstrap (resample seeds, then samples: analysis/bootstrap.py) built from
the per-sample records; and the difference of every family against a baseline family (the
compute-matched one when present), with the same kind of interval (samples paired, seeds
independent).

Hook for the report (reporting/pdf.py): after the curves section,
``family_section(sink, bundle, palette, title)``; it adds nothing when no model belongs to a family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.bootstrap import (
    bootstrap_p_value,
    two_level_bootstrap,
    two_level_bootstrap_diff,
    two_level_diff_replicates,
)
from ..training.family import split_label
from .load import (
    NORM_NAMES,
    WORST_CASE,
    ResultsBundle,
    eps_grid,
    eps_label,
    norm_attacks,
    worst_case_per_sample,
)
from .pages import new_page
from .stats import holm

__all__ = ["families", "family_comparisons", "family_curves", "family_intervals", "family_page",
           "family_section"]


def families(models: list[str]) -> dict[str, list[tuple[int, str]]]:
    """``{family: [(seed, model label), ...]}`` for labels of the form ``NAME@seed<S>``, seeds sorted."""
    out: dict[str, list[tuple[int, str]]] = {}
    for m in models:
        fam, seed = split_label(m)
        if seed is not None:
            out.setdefault(fam, []).append((seed, m))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _robust_matrix(bundle: ResultsBundle, labels: list[str], attack: str, norm: str, eps: float,
                   grid: list[float]) -> np.ndarray | None:
    """(seeds, samples) 0/1 robust matrix over the samples every seed has, or None."""
    if bundle.samples is None:
        return None
    cols = []
    for label in labels:
        if attack == WORST_CASE:
            wc = worst_case_per_sample(bundle.summary, bundle.samples, label, norm, grid)
            if wc is None or eps not in wc.columns:
                return None
            cols.append(wc[eps].astype(float))
        else:
            s = bundle.samples
            part = s[(s["model"] == label) & (s["attack"] == attack) & (np.abs(s["eps"] - eps) < 1e-9)]
            if part.empty:
                return None
            ok = (part["clean_pred"].to_numpy() == part["label"].to_numpy()) & ~part["broken"].to_numpy(bool)
            cols.append(pd.Series(ok.astype(float), index=part["index"].to_numpy()))
    common = sorted(set.intersection(*(set(c.index) for c in cols)))
    if not common:
        return None
    return np.stack([c.loc[common].to_numpy() for c in cols])


def family_curves(bundle: ResultsBundle) -> pd.DataFrame:
    """Per family, attack, norm and eps: mean/std/min/max robust accuracy over seeds and the seeds' values."""
    fams = families(bundle.models)
    s = bundle.summary[(bundle.summary["status"] == "ok") & np.isfinite(bundle.summary["eps"].astype(float))]
    rows = []
    for fam, members in fams.items():
        labels = [m for _, m in members]
        part = s[s["model"].isin(labels)]
        for (attack, norm, eps), d in part.groupby(["attack", "norm", "eps"], sort=True):
            vals = d.set_index("model")["robust_acc"].reindex(labels).to_numpy(float)
            ok = vals[np.isfinite(vals)]
            rows.append({"family": fam, "attack": attack, "norm": norm, "eps": float(eps),
                         "seeds": len(ok), "mean": float(ok.mean()) if len(ok) else math.nan,
                         "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
                         "min": float(ok.min()) if len(ok) else math.nan,
                         "max": float(ok.max()) if len(ok) else math.nan,
                         "per_seed": ", ".join(f"{v:.3f}" for v in vals)})
    return pd.DataFrame(rows, columns=["family", "attack", "norm", "eps", "seeds", "mean", "std", "min",
                                       "max", "per_seed"])


def family_intervals(bundle: ResultsBundle, replicates: int = 1000, baseline: str | None = None
                     ) -> pd.DataFrame:
    """Two-level bootstrap intervals per family/attack/eps, and each family minus the baseline family.

    ``baseline`` names the family the others are compared with; by default the first family without
    attention whose name contains "matched" (the compute-matched baseline), else the first family
    without attention; without one, no differences are given.
    """
    fams = families(bundle.models)
    rows: list[dict[str, Any]] = []
    if not fams:
        return pd.DataFrame(rows)
    plain = [f for f, mem in fams.items() if not any(bundle.has_attention.get(m) for _, m in mem)]
    base = baseline if baseline in fams else next((f for f in plain if "matched" in f),
                                                   plain[0] if plain else None)
    for norm in sorted(set(bundle.summary["norm"].astype(str))):
        grid = eps_grid(bundle.summary, norm)
        for attack in [*norm_attacks(bundle.summary, norm), WORST_CASE]:
            for eps in grid:
                mats = {f: _robust_matrix(bundle, [m for _, m in mem], attack, norm, eps, grid)
                        for f, mem in fams.items()}
                for f, mat in mats.items():
                    if mat is None:
                        continue
                    iv = two_level_bootstrap(mat, replicates=replicates)
                    row = {"family": f, "attack": attack, "norm": norm, "eps": eps, "seeds": mat.shape[0],
                           "samples": mat.shape[1], "robust_acc": iv.estimate, "low": iv.low, "high": iv.high,
                           "vs": "", "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan}
                    b = mats.get(base) if base else None
                    if b is not None and f != base and b.shape[1] == mat.shape[1]:
                        d = two_level_bootstrap_diff(mat, b, replicates=replicates)
                        row.update(vs=base, diff=d.estimate, diff_low=d.low, diff_high=d.high)
                    rows.append(row)
    return pd.DataFrame(rows)


def family_comparisons(bundle: ResultsBundle, pairs: Sequence[tuple[str, str]], *,
                       attacks: Sequence[str] = (WORST_CASE,), eps: Sequence[float] | None = None,
                       replicates: int = 2000, alpha: float = 0.05, rng: int = 0) -> pd.DataFrame:
    """Each ``(family, baseline)`` pair's robust-accuracy difference, Holm-corrected across the table.

    One row per pair, norm, attack (of ``attacks``) and eps (of ``eps`` in the pair's units, default
    every budget; 0 is clean accuracy): the difference of means, its two-level bootstrap
    replicates' two-sided p-value, Holm's adjusted p-value across every row returned (``reject`` at
    ``alpha``), and the interval at the row's Holm level: the k-th smallest of m p-values is tested
    at alpha / (m - k + 1), and its interval is the matching (1 - alpha / (m - k + 1)) percentile
    interval, so an interval excludes 0 exactly where Holm's step-down rejects (until the first
    non-rejection; after it nothing rejects, and the interval is only descriptive).
    """
    fams = families(bundle.models)
    rows: list[dict[str, Any]] = []
    reps: list[np.ndarray] = []
    for norm in sorted(set(bundle.summary["norm"].astype(str))):
        grid = eps_grid(bundle.summary, norm)
        chosen = grid if eps is None else [e for e in grid if any(abs(e - x) < 1e-9 for x in eps)]
        for attack in attacks:
            for e in chosen:
                for fam, base in pairs:
                    if fam not in fams or base not in fams:
                        continue
                    a = _robust_matrix(bundle, [m for _, m in fams[fam]], attack, norm, e, grid)
                    b = _robust_matrix(bundle, [m for _, m in fams[base]], attack, norm, e, grid)
                    if a is None or b is None or a.shape[1] != b.shape[1]:
                        continue
                    r = two_level_diff_replicates(a, b, replicates=replicates, rng=rng)
                    reps.append(r)
                    rows.append({"family": fam, "vs": base, "attack": attack, "norm": norm, "eps": e,
                                 "seeds": a.shape[0], "baseline_seeds": b.shape[0], "samples": a.shape[1],
                                 "robust_acc": float(a.mean()), "baseline_robust_acc": float(b.mean()),
                                 "diff": float(a.mean() - b.mean()), "p": bootstrap_p_value(r)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    reject, adjusted = holm(out["p"].tolist(), alpha=alpha)
    m = len(out)
    rank = np.empty(m, dtype=int)
    rank[np.argsort(out["p"].to_numpy(), kind="stable")] = np.arange(m)
    levels = [alpha / (m - k) for k in rank]  # k from 0: the k-th smallest p faces alpha / (m - k)
    out["holm_level"] = [1 - a for a in levels]
    out["diff_low"] = [float(np.quantile(r, a / 2)) for r, a in zip(reps, levels, strict=True)]
    out["diff_high"] = [float(np.quantile(r, 1 - a / 2)) for r, a in zip(reps, levels, strict=True)]
    out["p_holm"] = adjusted
    out["reject"] = reject
    out["comparisons"] = m
    return out


def family_page(curves: pd.DataFrame, palette: dict[str, Any], title: str) -> Figure:
    """One panel per (attack, norm): each family's mean over seeds with its min-max band."""
    panels = list(curves.groupby(["norm", "attack"], sort=True))
    fig = new_page(title, "mean over seeds (line) and the range of the seeds (band)")
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    for k, ((norm, attack), d) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for fam, dd in d.groupby("family", sort=True):
            dd = dd.sort_values("eps")
            x = dd["eps"].to_numpy() * 255
            colour = palette.get(fam)
            ax.plot(x, dd["mean"], marker="o", color=colour, label=f"{fam} ({int(dd['seeds'].max())} seeds)")
            ax.fill_between(x, dd["min"], dd["max"], color=colour, alpha=0.2)
        ax.set_title(f"{attack} ({NORM_NAMES.get(norm, norm)})", fontsize=9)
        ax.set_xlabel("eps (/255)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    fig.subplots_adjust(top=0.85, hspace=0.45, wspace=0.3)
    return fig


def family_section(sink: Any, bundle: ResultsBundle, palette: dict[str, Any], title: str
                   ) -> pd.DataFrame | None:
    """Add the family pages to a report (PageSink); returns the interval table, None without families."""
    if not families(bundle.models):
        return None
    curves = family_curves(bundle)
    fam_palette = {f: palette.get(mem[0][1]) for f, mem in families(bundle.models).items()}
    sink.add(family_page(curves, fam_palette, title), "family_curves")
    iv = family_intervals(bundle)
    if not iv.empty:
        show = iv.copy()
        show["eps"] = show["eps"].map(eps_label)
        for c in ("robust_acc", "low", "high", "diff", "diff_low", "diff_high"):
            show[c] = (100 * show[c]).round(1)
        sink.table_pages(f"{title}: two-level bootstrap (seeds, then samples), %", show,
                         note="intervals resample training seeds, then test samples (95 %, percentile); "
                         "with 2-3 seeds read them as a lower bound on the uncertainty")
    return iv
