"""The plain-language verdict: which model is more robust, where, by how much, and how sure we are.

Per norm the verdict compares the worst-case robust accuracy (a sample counts as robust only if no
attack of that norm broke it at any budget <= eps) between every pair of models at every nonzero
eps. The 95% interval of the difference is a paired bootstrap over samples when both models were
evaluated on the same samples (samples.parquet), else Newcombe's hybrid score interval from the two
Wilson intervals (independent proportions). A difference is called only when its interval
excludes 0; otherwise the text says "no significant difference".
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from .load import (
    BOUNDED_NORMS,
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

N_BOOT = 4000
SEED = 0


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of mean(a) - mean(b) for paired 0/1 outcomes, resampling samples with replacement.

    Per-sample differences take only the values -1, 0, +1, so resampling n of them is a multinomial
    draw over those three values: exact, and O(n_boot) instead of O(n_boot * n) memory.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = len(a)
    if n == 0:
        return (math.nan, math.nan)
    d = a - b
    probs = np.array([(d > 0).mean(), (d == 0).mean(), (d < 0).mean()])
    probs = probs / probs.sum()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, probs, size=n_boot)
    diffs = (counts[:, 0] - counts[:, 2]) / n
    alpha = (1 - level) / 2
    return (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))


def newcombe_diff(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score (method 10) 95% interval for p1 - p2 from independent samples."""
    if n1 <= 0 or n2 <= 0 or not (np.isfinite(p1) and np.isfinite(p2)):
        return (math.nan, math.nan)
    l1, u1 = wilson(p1 * n1, n1)
    l2, u2 = wilson(p2 * n2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _pp(x: float, sign: bool = True) -> str:
    return f"{x * 100:+.1f}" if sign else f"{x * 100:.1f}"


def _compare(
    name_a: str,
    name_b: str,
    acc_a: float,
    acc_b: float,
    vec_a: pd.Series | None,
    vec_b: pd.Series | None,
    n_a: int,
    n_b: int,
) -> dict[str, Any]:
    """One pairwise comparison (a minus b), paired when both models saw the same samples."""
    method = "newcombe"
    n = min(n_a, n_b)
    lo, hi = math.nan, math.nan
    if vec_a is not None and vec_b is not None and len(vec_a) and set(vec_a.index) == set(vec_b.index):
        common = vec_a.index
        lo, hi = paired_bootstrap_diff(vec_a.loc[common].to_numpy(), vec_b.loc[common].to_numpy())
        method = "paired bootstrap"
        n = len(common)
    else:
        lo, hi = newcombe_diff(acc_a, n_a, acc_b, n_b)
    diff = acc_a - acc_b
    significant = bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))
    better = (name_a if diff > 0 else name_b) if significant else None
    return {
        "model_a": name_a,
        "model_b": name_b,
        "acc_a": acc_a,
        "acc_b": acc_b,
        "diff": diff,
        "ci": [lo, hi],
        "method": method,
        "n": int(n),
        "significant": significant,
        "better": better,
    }


def _clean(bundle: ResultsBundle) -> tuple[dict[str, float], dict[str, int], dict[str, pd.Series | None]]:
    s = bundle.summary
    acc: dict[str, float] = {}
    ns: dict[str, int] = {}
    vecs: dict[str, pd.Series | None] = {}
    for m in bundle.models:
        rows = s[(s["model"] == m) & np.isfinite(s["clean_acc"].astype(float))]
        if rows.empty:
            continue
        acc[m] = float(rows["clean_acc"].iloc[0])
        ns[m] = int(rows["n"].iloc[0])
        vecs[m] = None
        if bundle.samples is not None:
            sm = bundle.samples[bundle.samples["model"] == m].drop_duplicates("index").set_index("index")
            if not sm.empty:
                vecs[m] = (sm["clean_pred"] == sm["label"]).astype(float).sort_index()
    return acc, ns, vecs


def _norm_series(bundle: ResultsBundle, norm: str, grid: list[float]) -> dict[str, Any]:
    """Worst-case robust accuracy per model and eps for one norm, with per-sample vectors if available."""
    s = bundle.summary
    acc: dict[str, dict[float, float]] = {}
    ns: dict[str, int] = {}
    vecs: dict[str, pd.DataFrame | None] = {}
    source: dict[str, str] = {}
    for m in bundle.models:
        rows = s[(s["model"] == m) & (s["norm"] == norm)]
        if rows.empty:
            continue
        wc = rows[(rows["attack"] == WORST_CASE) & (rows["status"] == "ok")]
        per = worst_case_per_sample(s, bundle.samples, m, norm, grid) if bundle.samples is not None else None
        vecs[m] = per
        ns[m] = int(rows["n"].max())
        acc[m] = {}
        for e in grid:
            hit = wc[(wc["eps"] - e).abs() <= EPS_TOL]
            if not hit.empty:
                acc[m][e] = float(hit["robust_acc"].iloc[0])
                source[m] = "worst-case rows of summary.parquet"
            elif per is not None:
                acc[m][e] = float(per[e].mean())
                source[m] = "worst case recomputed from samples.parquet"
            else:
                cells = rows[
                    (rows["attack"] != WORST_CASE)
                    & (rows["status"] == "ok")
                    & ((rows["eps"] - e).abs() <= EPS_TOL)
                ]
                if not cells.empty:
                    acc[m][e] = float(cells["robust_acc"].min())
                    source[m] = "minimum over attacks of summary.parquet (no per-sample data)"
    return {"acc": acc, "n": ns, "vecs": vecs, "source": source}


def _sample_identity(bundle: ResultsBundle) -> Any:
    """``same(a, b)``: did models a and b see the same samples (same indices, same labels)?

    Only then is a paired comparison valid; models from different runs may have used other data.
    """
    labels: dict[str, pd.Series] = {}
    if bundle.samples is not None:
        for m, g in bundle.samples.groupby("model", sort=False):
            labels[str(m)] = g.drop_duplicates("index").set_index("index")["label"].sort_index()

    def same(a: str, b: str) -> bool:
        if bundle.model_folder.get(a) == bundle.model_folder.get(b):
            return True
        la, lb = labels.get(a), labels.get(b)
        return la is not None and lb is not None and la.index.equals(lb.index) and bool((la == lb).all())

    return same


def compute_verdict(bundle: ResultsBundle) -> dict[str, Any]:
    """Compare models per norm; return structured numbers plus the paragraph (``"text"``) for the PDF."""
    models = bundle.models
    clean_acc, clean_n, clean_vecs = _clean(bundle)
    out: dict[str, Any] = {
        "models": models,
        "clean": clean_acc,
        "clean_n": clean_n,
        "clean_comparisons": [],
        "norms": {},
        "text": "",
    }
    same = _sample_identity(bundle)
    for a, b in itertools.combinations(sorted(clean_acc), 2):
        pair = same(a, b)
        out["clean_comparisons"].append(
            _compare(
                a,
                b,
                clean_acc[a],
                clean_acc[b],
                clean_vecs.get(a) if pair else None,
                clean_vecs.get(b) if pair else None,
                clean_n[a],
                clean_n[b],
            )
        )
    for norm in BOUNDED_NORMS:
        grid = eps_grid(bundle.summary, norm)
        attacks = norm_attacks(bundle.summary, norm)
        if not grid or not attacks:
            continue
        ser = _norm_series(bundle, norm, grid)
        comps = []
        for a, b in itertools.combinations(sorted(ser["acc"]), 2):
            for e in grid:
                if e <= EPS_TOL or e not in ser["acc"][a] or e not in ser["acc"][b]:
                    continue
                va, vb = (ser["vecs"].get(a), ser["vecs"].get(b)) if same(a, b) else (None, None)
                c = _compare(
                    a,
                    b,
                    ser["acc"][a][e],
                    ser["acc"][b][e],
                    va[e].astype(float) if va is not None else None,
                    vb[e].astype(float) if vb is not None else None,
                    ser["n"][a],
                    ser["n"][b],
                )
                c["eps"] = e
                comps.append(c)
        head = headline_eps(grid, norm)
        out["norms"][norm] = {
            "attacks": attacks,
            "eps": grid,
            "headline_eps": head,
            "robust_acc": {m: dict(v) for m, v in ser["acc"].items()},
            "n": ser["n"],
            "source": ser["source"],
            "comparisons": comps,
        }
    out["unbounded"] = _unbounded(bundle)
    out["text"] = verdict_text(out)
    return out


def bootstrap_median_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of median(a) - median(b) for independent samples (resampled separately)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, size=(n_boot, len(a))), axis=1)
    mb = np.median(rng.choice(b, size=(n_boot, len(b))), axis=1)
    alpha = (1 - level) / 2
    d = ma - mb
    return (float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)))


def _unbounded(bundle: ResultsBundle) -> dict[str, Any]:
    """Per unbounded (minimal-perturbation) attack: median norm of the successful perturbations per model,
    and for each pair of models the bootstrap CI of the difference of medians (from samples.parquet)."""
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


def _ci(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    return f"95% CI {_pp(lo)} to {_pp(hi)} pp, {c['method']}, n={c['n']}"


def _focus(comparisons: list[dict[str, Any]], best: str | None, n_models: int) -> list[dict[str, Any]]:
    """All pairs for two models; with more, only the pairs involving the leading model (readable text)."""
    if n_models <= 2 or best is None:
        return comparisons
    return [c for c in comparisons if best in (c["model_a"], c["model_b"])]


def verdict_text(v: dict[str, Any]) -> str:
    """Plain-language paragraphs from :func:`compute_verdict`'s structured output."""
    models = v["models"]
    paras: list[str] = []
    if not models:
        return "No model has results: nothing can be compared."
    if v["clean"]:
        accs = ", ".join(f"{m} {_pp(a, False)}%" for m, a in sorted(v["clean"].items()))
        line = f"Clean accuracy: {accs}."
        best = max(v["clean"], key=lambda m: v["clean"][m])
        if len(v["clean"]) > 2:
            line += (
                f" With {len(v['clean'])} models, the most accurate ({best}) is compared with each other one."
            )
        for c in _focus(v["clean_comparisons"], best, len(v["clean"])):
            if c["significant"]:
                line += (
                    f" {c['better']} is more accurate on clean inputs by {abs(c['diff']) * 100:.1f} pp "
                    f"({c['model_a']} minus {c['model_b']}: {_pp(c['diff'])} pp, {_ci(c)})."
                )
            else:
                line += (
                    f" No significant clean-accuracy difference between {c['model_a']} and "
                    f"{c['model_b']} ({_pp(c['diff'])} pp, {_ci(c)})."
                )
        paras.append(line)
    if not v["norms"]:
        paras.append("No bounded attack finished, so robust accuracy cannot be compared.")
    for norm, nv in v["norms"].items():
        head = nv["headline_eps"]
        attacks = ", ".join(nv["attacks"])
        accs = nv["robust_acc"]
        intro = f"{NORM_NAMES.get(norm, norm)} threat model (worst case over {attacks})"
        if head is not None:
            at_head = ", ".join(f"{m} {accs[m][head] * 100:.1f}%" for m in sorted(accs) if head in accs[m])
            intro += f": robust accuracy at eps {eps_label(head)}: {at_head}."
        else:
            intro += "."
        if len(accs) < 2:
            intro += " Only one model has results under this norm, so there is nothing to compare."
            paras.append(intro)
            continue
        if not any(e > EPS_TOL for e in nv["eps"]):
            intro += " Only eps 0 was evaluated, which equals clean accuracy: no robustness comparison."
            paras.append(intro)
            continue
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        ranked = [m for m in accs if head is not None and head in accs[m]]
        best = max(ranked, key=lambda m: accs[m][head]) if ranked else None
        for c in _focus(nv["comparisons"], best, len(accs)):
            pairs.setdefault((c["model_a"], c["model_b"]), []).append(c)
        parts = [intro]
        if len(accs) > 2 and best is not None:
            parts.append(
                f"With {len(accs)} models, the most robust at {eps_label(head)} ({best}) is compared "
                "with each other one."
            )
        for (a, b), cs in pairs.items():
            hc = next((c for c in cs if head is not None and abs(c["eps"] - head) <= EPS_TOL), cs[-1])
            if hc["significant"]:
                worse = b if hc["better"] == a else a
                parts.append(
                    f"At {eps_label(hc['eps'])}, {hc['better']} is more robust than {worse} by "
                    f"{abs(hc['diff']) * 100:.1f} pp ({a} minus {b}: {_pp(hc['diff'])} pp, {_ci(hc)})."
                )
            else:
                parts.append(
                    f"At {eps_label(hc['eps'])}, no significant difference between {a} and {b} "
                    f"({_pp(hc['diff'])} pp, {_ci(hc)})."
                )
            wins: dict[str, list[str]] = {a: [], b: []}
            ties: list[str] = []
            for c in cs:
                (wins[c["better"]] if c["significant"] else ties).append(eps_label(c["eps"]))
            summary = []
            for m in (a, b):
                if wins[m]:
                    summary.append(f"{m} is more robust at {', '.join(wins[m])}")
            if ties:
                summary.append(f"no significant difference at {', '.join(ties)}")
            if len(accs) == 2:  # with more models the per-eps detail is in the tables and verdict.json
                parts.append("Across the eps grid: " + "; ".join(summary) + ".")
        paras.append(" ".join(parts))
    for attack, u in (v.get("unbounded") or {}).items():
        meds = ", ".join(f"{m} {x:.3g} (x255: {x * 255:.3g})" for m, x in sorted(u["median_norm"].items()))
        line = (
            f"Unbounded {attack} ({NORM_NAMES.get(u['norm'], u['norm'])}, minimal perturbation): median "
            f"norm of the perturbations that fooled each model: {meds}; larger means more robust."
        )
        best_u = max(u["median_norm"], key=lambda m: u["median_norm"][m])
        for c in _focus(u["comparisons"], best_u, len(u["median_norm"])):
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
    if len(models) >= 2 and v["clean"] and v["norms"]:
        paras.append(
            "Robust accuracy counts clean mistakes as failures, so at small eps a gap partly "
            "repeats the clean-accuracy gap; compare the curves' slopes as well as their levels."
        )
    return "\n\n".join(paras)
