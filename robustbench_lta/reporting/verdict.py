"""The plain-language verdict: which model is more robust, where, by how much, how sure, and how strong.

Per norm the verdict compares the worst-case robust accuracy (a sample is robust at eps only if no
attack of that norm broke it at any budget <= eps) between every pair of models at every nonzero
eps, and clean accuracy. Models evaluated on the same samples are compared paired: exact McNemar
test, bootstrap interval of the difference; otherwise unpaired: Fisher's exact test, Newcombe
interval (reporting/stats.py, all through scipy/statsmodels). The tests of one pair of models (clean
accuracy and every budget) form one family, Holm-corrected; a difference is called only when it
survives the correction. Each worst case is named with the attacks it was really taken over, the
strongest attack at the headline eps is named, and when no strong attack (AutoAttack, PGD/APGD with
>= 50 steps) ran, the verdict opens by saying the numbers are upper bounds from weak attacks.
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
    WORST_CASE,
    ResultsBundle,
    eps_grid,
    headline_eps,
    norm_attacks,
    worst_case_per_sample,
)
from .protocol import attack_specs, strength_at
from .stats import ALPHA, holm, mcnemar_exact, newcombe_diff, paired_diff_ci, unpaired_test
from .unbounded import unbounded_verdict
from .verdict_text import caveat_sentences, verdict_text


def compare_pair(
    name_a: str,
    name_b: str,
    acc_a: float,
    acc_b: float,
    vec_a: pd.Series | None,
    vec_b: pd.Series | None,
    n_a: int,
    n_b: int,
) -> dict[str, Any]:
    """One comparison (a minus b): test p-value and 95% interval, paired when both saw the same samples.

    ``significant``/``better`` are set later, after the Holm correction of the pair's family.
    """
    diff = acc_a - acc_b
    if vec_a is not None and vec_b is not None and len(vec_a) and set(vec_a.index) == set(vec_b.index):
        common = vec_a.index
        a, b = vec_a.loc[common].to_numpy() > 0.5, vec_b.loc[common].to_numpy() > 0.5
        p, only_a, only_b = mcnemar_exact(a, b)
        lo, hi = paired_diff_ci(a, b)
        method, test, n = "paired", "exact McNemar", len(common)
        extra = {"only_a": only_a, "only_b": only_b}
    else:
        k_a, k_b = int(round(acc_a * n_a)), int(round(acc_b * n_b))
        p = unpaired_test(k_a, n_a, k_b, n_b)
        lo, hi = newcombe_diff(k_a, n_a, k_b, n_b)
        method, test, n = "unpaired", "Fisher exact", min(n_a, n_b)
        extra = {"k_a": k_a, "k_b": k_b, "n_a": int(n_a), "n_b": int(n_b)}
    return {
        "model_a": name_a,
        "model_b": name_b,
        "acc_a": acc_a,
        "acc_b": acc_b,
        "diff": diff,
        "ci": [lo, hi],
        "method": method,
        "test": test,
        "p": p,
        "p_holm": math.nan,
        "n": int(n),
        "significant": False,
        "better": None,
        **extra,
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


def _norm_series(bundle: ResultsBundle, norm: str, grid: list[float], clean: dict[str, float]) -> dict:
    """Worst-case robust accuracy (and among clean-correct) per model and eps, with per-sample vectors."""
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
    # among clean-correct images: robust / clean (both shares of the same n)
    cond = {
        m: {e: (a / clean[m] if clean.get(m) else math.nan) for e, a in v.items()} for m, v in acc.items()
    }
    return {"acc": acc, "cond": cond, "n": ns, "vecs": vecs, "source": source}


def _sample_identity(bundle: ResultsBundle) -> Any:
    """``same(a, b)``: did models a and b see the same samples (same indices, same labels)?"""
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


def _apply_holm(out: dict[str, Any]) -> None:
    """Holm over each pair's family (clean accuracy and every nonzero budget of every norm)."""
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in out["clean_comparisons"]:
        families.setdefault((c["model_a"], c["model_b"]), []).append(c)
    for nv in out["norms"].values():
        for c in nv["comparisons"]:
            families.setdefault((c["model_a"], c["model_b"]), []).append(c)
    for comps in families.values():
        reject, adjusted = holm([c["p"] for c in comps], ALPHA)
        for c, r, adj in zip(comps, reject, adjusted, strict=True):
            c["p_holm"], c["family"] = adj, len(comps)
            c["significant"] = bool(r and c["diff"] != 0)
            c["better"] = (c["model_a"] if c["diff"] > 0 else c["model_b"]) if c["significant"] else None


def compute_verdict(bundle: ResultsBundle, strong_commands: dict[str, str] | None = None) -> dict[str, Any]:
    """Compare models per norm; structured numbers plus the paragraphs (``"text"``) for the PDF.

    ``strong_commands`` maps a results folder's label to the command that adds a strong attack to it
    (named in the weak-attack sentence).
    """
    models = bundle.models
    clean_acc, clean_n, clean_vecs = _clean(bundle)
    out: dict[str, Any] = {
        "models": models,
        "clean": clean_acc,
        "clean_n": clean_n,
        "clean_comparisons": [],
        "norms": {},
        "weak": [],
        "forced": list(bundle.forced),
        "text": "",
    }
    same = _sample_identity(bundle)
    for a, b in itertools.combinations(sorted(clean_acc), 2):
        pair = same(a, b)
        c = compare_pair(
            a,
            b,
            clean_acc[a],
            clean_acc[b],
            clean_vecs.get(a) if pair else None,
            clean_vecs.get(b) if pair else None,
            clean_n[a],
            clean_n[b],
        )
        out["clean_comparisons"].append({**c, "eps": None})
    s = bundle.summary
    for norm in BOUNDED_NORMS:
        grid = eps_grid(s, norm)
        if not grid or not norm_attacks(s, norm):
            continue
        ser = _norm_series(bundle, norm, grid, clean_acc)
        comps = []
        for a, b in itertools.combinations(sorted(ser["acc"]), 2):
            va, vb = (ser["vecs"].get(a), ser["vecs"].get(b)) if same(a, b) else (None, None)
            for e in grid:
                if e <= EPS_TOL or e not in ser["acc"][a] or e not in ser["acc"][b]:
                    continue
                c = compare_pair(
                    a,
                    b,
                    ser["acc"][a][e],
                    ser["acc"][b][e],
                    va[e].astype(float) if va is not None else None,
                    vb[e].astype(float) if vb is not None else None,
                    ser["n"][a],
                    ser["n"][b],
                )
                comps.append({**c, "eps": e})
        head = headline_eps(grid, norm)
        by_model = {m: norm_attacks(s[s["model"] == m], norm) for m in ser["acc"]}
        strength = {}
        for m in ser["acc"]:
            specs = attack_specs(bundle.manifests.get(bundle.model_folder.get(m, ""), {}))
            strength[m] = strength_at(s, specs, m, norm, head) if head is not None else {}
        out["norms"][norm] = {
            "attacks": norm_attacks(s, norm),
            "attacks_by_model": by_model,
            "eps": grid,
            "headline_eps": head,
            "robust_acc": {m: dict(v) for m, v in ser["acc"].items()},
            "conditional_acc": ser["cond"],
            "n": ser["n"],
            "source": ser["source"],
            "strength": strength,
            "comparisons": comps,
        }
        weak = [m for m in strength if not strength[m].get("strong")]
        if weak and head is not None and head > EPS_TOL:
            folders = sorted({bundle.model_folder.get(m, "") for m in weak})
            cmds = [(strong_commands or {}).get(f) for f in folders]
            out["weak"].append(
                {
                    "norm": norm,
                    "eps": head,
                    "models": weak,
                    "attacks": sorted({a for m in weak for a in strength[m].get("attacks", [])}),
                    "commands": [c for c in cmds if c],
                }
            )
    _apply_holm(out)
    out["unbounded"] = unbounded_verdict(bundle)
    out["caveats"] = caveat_sentences(out)
    out["text"] = verdict_text(out)
    return out
