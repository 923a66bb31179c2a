"""Unbounded (minimal-perturbation) attacks in the verdict: median perturbation norm per model.

For each pair of models the 95% interval of the difference of medians is a percentile bootstrap
over the two independent sets of successful perturbations (``scipy.stats.bootstrap``, seeded).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np

from .load import NORM_NAMES, WORST_CASE, ResultsBundle
from .stats import SEED


def bootstrap_median_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of median(a) - median(b) for independent samples (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return (math.nan, math.nan)

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(x, axis=axis) - np.median(y, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (a, b),
            stat,
            confidence_level=level,
            n_resamples=n_boot,
            method="percentile",
            rng=np.random.default_rng(seed),
            batch=500,
        )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def unbounded_verdict(bundle: ResultsBundle) -> dict[str, Any]:
    """Per unbounded attack: median norm of the successful perturbations per model, and per pair of
    models the bootstrap CI of the difference of medians (from samples.parquet)."""
    s = bundle.summary
    rows = s[(~np.isfinite(s["eps"].astype(float))) & (s["status"] == "ok") & (s["attack"] != WORST_CASE)]
    out: dict[str, Any] = {}
    for attack, g in rows.groupby("attack", sort=True):
        med = {
            str(r.model): float(r.median_norm)
            for r in g.itertuples(index=False)
            if np.isfinite(r.median_norm)
        }
        if not med:
            continue
        norms: dict[str, np.ndarray] = {}
        if bundle.samples is not None:
            sm = bundle.samples[(bundle.samples["attack"] == attack) & ~np.isfinite(bundle.samples["eps"])]
            for m in med:
                x = sm[sm["model"] == m]
                fooled = (x["clean_pred"] == x["label"]) & x["broken"].astype(bool)
                norms[m] = x.loc[fooled, "norm"].to_numpy(float)
        comps = []
        for a, b in itertools.combinations(sorted(med), 2):
            lo, hi = (
                bootstrap_median_diff(norms[a], norms[b])
                if a in norms and b in norms
                else (math.nan, math.nan)
            )
            sig = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
            diff = med[a] - med[b]
            comps.append(
                {
                    "model_a": a,
                    "model_b": b,
                    "diff": diff,
                    "ci": [lo, hi],
                    "significant": sig,
                    "better": (a if diff > 0 else b) if sig else None,
                }
            )
        out[str(attack)] = {"norm": str(g["norm"].iloc[0]), "median_norm": med, "comparisons": comps}
    return out


def unbounded_text(v: dict[str, Any], focus: Any) -> list[str]:
    """One paragraph per unbounded attack."""
    paras = []
    for attack, u in (v.get("unbounded") or {}).items():
        meds = ", ".join(f"{m} {x:.3g} (x255: {x * 255:.3g})" for m, x in sorted(u["median_norm"].items()))
        line = (
            f"Unbounded {attack} ({NORM_NAMES.get(u['norm'], u['norm'])}, minimal perturbation): median "
            f"norm of the perturbations that fooled each model: {meds}; larger means more robust."
        )
        best_u = max(u["median_norm"], key=lambda m: u["median_norm"][m])
        for c in focus(u["comparisons"], best_u, len(u["median_norm"])):
            lo, hi = c["ci"]
            ci = (
                f"95% CI {lo:+.3g} to {hi:+.3g}, bootstrap"
                if np.isfinite(lo)
                else "no per-sample norms, so no interval"
            )
            if c["significant"]:
                worse = c["model_b"] if c["better"] == c["model_a"] else c["model_a"]
                line += (
                    f" {c['better']} needs larger perturbations than {worse} "
                    f"({c['model_a']} minus {c['model_b']}: {c['diff']:+.3g}, {ci})."
                )
            else:
                line += (
                    f" No significant difference in median norm between {c['model_a']} and {c['model_b']} "
                    f"({c['diff']:+.3g}, {ci})."
                )
        paras.append(line)
    return paras
