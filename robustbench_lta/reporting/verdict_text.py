"""The verdict's paragraphs, from :func:`~robustbench_lta.reporting.verdict.compute_verdict`'s numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plugins.strength import STRONG_STEPS, strength_tag
from .load import EPS_TOL, NORM_NAMES, eps_label
from .unbounded import unbounded_text


def _pp(x: float, sign: bool = True) -> str:
    return f"{x * 100:+.1f}" if sign else f"{x * 100:.1f}"


def _ci(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    interval = "bootstrap" if c["method"] == "paired" else "Newcombe"
    return (
        f"95% CI {_pp(lo)} to {_pp(hi)} pp ({interval}); {c['test']} p={c['p']:.2g}, "
        f"Holm-adjusted p={c['p_holm']:.2g} over {c.get('family', 1)} tests; n={c['n']}"
    )


def _focus(comparisons: list[dict[str, Any]], best: str | None, n_models: int) -> list[dict[str, Any]]:
    """All pairs for two models; with more, only the pairs involving the leading model (readable text)."""
    if n_models <= 2 or best is None:
        return comparisons
    return [c for c in comparisons if best in (c["model_a"], c["model_b"])]


def _weak_sentence(w: dict[str, Any]) -> str:
    norm = NORM_NAMES.get(w["norm"], w["norm"])
    strong = "`autoattack`" if w["norm"] == "linf" else "`ta:AutoAttack:norm=L2` or `pgd-l2:steps=100`"
    how = (
        f"add AutoAttack at {eps_label(w['eps'])} to the same results folder with "
        + " and ".join(f"`{c}`" for c in w["commands"])
        + " (finished cells are reused and the new attack joins the worst case), then report again"
        if w["commands"]
        else f"add {strong} at this eps to the sweep's attacks and run it again into the same results "
        "folder (finished cells are reused and the new attack joins the worst case), then report again"
    )
    return (
        f"UPPER BOUNDS ONLY: at {eps_label(w['eps'])} ({norm}) no AutoAttack and no PGD/APGD with >= "
        f"{STRONG_STEPS} steps ran for {', '.join(w['models'])} "
        f"(attacks: {', '.join(w['attacks']) or 'none'}), "
        f"so these robust accuracies are upper bounds from weak attacks; {how}."
    )


def _norm_intro(norm: str, nv: dict[str, Any]) -> str:
    head, accs, by_model = nv["headline_eps"], nv["robust_acc"], nv["attacks_by_model"]
    sets = {tuple(v) for v in by_model.values()}
    if len(sets) <= 1:
        over = f"worst case over {', '.join(next(iter(sets), ()))}"
    else:
        over = "worst case over the attacks each model had: " + "; ".join(
            f"{m}: {', '.join(v)}" for m, v in sorted(by_model.items())
        )
    intro = f"{NORM_NAMES.get(norm, norm)} threat model ({over})"
    if len(sets) > 1:
        intro += ". The attack sets differ, so these worst cases are not like-for-like"
    if head is None:
        return intro + "."
    cond = nv["conditional_acc"]
    at_head = ", ".join(f"{m} {accs[m][head] * 100:.1f}%" for m in sorted(accs) if head in accs[m])
    among = ", ".join(
        f"{m} {cond[m][head] * 100:.1f}%"
        for m in sorted(cond)
        if head in cond[m] and np.isfinite(cond[m][head])
    )
    intro += f": robust accuracy at eps {eps_label(head)}: {at_head}"
    intro += f" (among clean-correct images: {among})." if among else "."
    strongest = {}
    for m, st in sorted(nv["strength"].items()):
        if st.get("strongest"):
            a, r = st["strongest"]
            strongest[m] = (f"{a} ({strength_tag(st.get('strong', {}).get(a))})", r)
    names = {t for t, _r in strongest.values()}
    if len(names) == 1 and len(strongest) > 1:  # the same attack for every model: named once
        everyone = "both models" if len(strongest) == 2 else f"all {len(strongest)} models"
        intro += f" Strongest attack at {eps_label(head)}: {next(iter(names))} for {everyone}."
    elif strongest:
        intro += f" Strongest attack at {eps_label(head)}: " + "; ".join(
            f"{t} for {m} ({r * 100:.1f}%)" for m, (t, r) in strongest.items()) + "."
    return intro


def compact_eps(eps: list[float], grid: list[float]) -> str:
    """Budgets as runs of neighbours on ``grid``: ``"2-8/255"``, ``"1/255, 3-5/255"``."""
    pos = {round(e, 9): i for i, e in enumerate(grid)}
    idx = sorted(pos[round(e, 9)] for e in eps if round(e, 9) in pos)
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    out = []
    for r in runs:
        lo, hi = eps_label(grid[r[0]]), eps_label(grid[r[-1]])
        out.append(lo if len(r) == 1 else f"{lo.removesuffix('/255')}-{hi}" if lo.endswith("/255") else
                   f"{lo}-{hi}")
    return ", ".join(out)


def holm_sentence(clean: list[dict[str, Any]], cs: list[dict[str, Any]]) -> str:
    """One pair's Holm family summarised: who is higher at how many budgets (compact), then clean."""
    grid = sorted(c["eps"] for c in cs)
    family = cs[0].get("family", len(cs) + len(clean))
    parts = []
    for winner in sorted({c["better"] for c in cs if c["significant"]}):
        at = [c["eps"] for c in cs if c["better"] == winner]
        parts.append(f"{winner} significantly more robust at {len(at)} of {len(grid)} budgets "
                     f"({compact_eps(at, grid)})")
    none = [c["eps"] for c in cs if not c["significant"]]
    if none:
        parts.append(f"no significant difference at {compact_eps(none, grid)}" if parts
                     else f"no significant difference at any of the {len(grid)} budgets")
    if clean:
        c = clean[0]
        parts.append(f"clean accuracy: {c['better']} higher" if c["significant"]
                     else "clean accuracy: no significant difference")
    what = f"clean accuracy and {len(grid)} budgets" if clean else f"{len(grid)} budgets"
    return f"Holm correction over this pair's {family} tests ({what}): " + "; ".join(parts) + "."


def bottom_line(v: dict[str, Any]) -> str:
    """The answer in one sentence: which model is more robust at the headline budget, and how sure.

    The same numbers as the verdict below it (worst-case robust accuracy at the headline eps of the
    L-inf threat model, else of the first norm; Holm-corrected tests); nothing new is computed here.
    """
    models = v["models"]
    if not models:
        return "Bottom line: no model has results, so nothing can be compared."
    norm = "linf" if "linf" in v["norms"] else next(iter(v["norms"]), None)
    nv = v["norms"].get(norm) if norm else None
    head = nv["headline_eps"] if nv else None
    at = {m: a[head] for m, a in (nv["robust_acc"] if nv else {}).items() if head is not None and head in a}
    if not at or head is None or head <= EPS_TOL:
        clean = ", ".join(f"{m} {_pp(a, False)}%" for m, a in sorted(v["clean"].items()))
        return f"Bottom line: no bounded attack result to compare (clean accuracy: {clean or 'none'})."
    where = f"at {eps_label(head)} ({NORM_NAMES.get(norm, norm)}, worst case over the attacks run)"
    upper = any(w["norm"] == norm for w in v["weak"])
    lead = "upper bounds only (no strong attack ran): " if upper else ""
    if len(at) == 1:
        m, a = next(iter(at.items()))
        clean = f" (clean {_pp(v['clean'][m], False)}%)" if m in v["clean"] else ""
        return f"Bottom line: {lead}{m} keeps {_pp(a, False)}% robust accuracy {where}{clean}."
    best = max(at, key=lambda m: at[m])
    comps = [c for c in nv["comparisons"]
             if abs(c["eps"] - head) <= EPS_TOL and best in (c["model_a"], c["model_b"])]
    if len(at) == 2 and comps:
        c = comps[0]
        a, b = c["model_a"], c["model_b"]
        if c["significant"]:
            worse = b if c["better"] == a else a
            text = (f"{c['better']} is more robust than {worse} {where}: {_pp(at[c['better']], False)}% vs "
                    f"{_pp(at[worse], False)}% robust accuracy ({abs(c['diff']) * 100:.1f} pp apart, "
                    "significant after Holm correction)")
        else:
            text = (f"no significant robustness difference between {a} and {b} {where}: "
                    f"{_pp(at[a], False)}% vs {_pp(at[b], False)}% (Holm-corrected)")
        cc = [x for x in v["clean_comparisons"] if (x["model_a"], x["model_b"]) == (a, b)]
        if cc:
            text += (f"; clean accuracy: {cc[0]['better']} higher" if cc[0]["significant"]
                     else "; clean accuracy does not differ significantly")
    else:
        wins = sum(1 for c in comps if c["better"] == best)
        text = (f"{best} is the most robust of {len(at)} models {where} ({_pp(at[best], False)}%), "
                f"significantly more robust than {wins} of the {len(at) - 1} others (Holm-corrected)")
    return f"Bottom line: {lead}{text}."


def n_sentence(v: dict[str, Any], same_samples: bool) -> str:
    """How many images each number rests on, said plainly (not only inside parentheses)."""
    ns = v.get("clean_n") or {}
    if not ns:
        return ""
    values = sorted(set(ns.values()))
    n_txt = f"n = {values[0]} images per model" if len(values) == 1 else (
        "n differs between models: " + ", ".join(f"{m} {k}" for m, k in sorted(ns.items())))
    if len(ns) < 2:
        return n_txt + "."
    paired = "the same images for every model: paired comparisons (exact McNemar, bootstrap intervals)"
    unpaired = "not the same images for every model: unpaired comparisons (Fisher exact, Newcombe intervals)"
    how = paired if same_samples else unpaired
    return f"{n_txt}; {how}."


def caveat_sentences(v: dict[str, Any]) -> list[str]:
    """What must be read before the verdict: a forced comparison, weak attacks only."""
    out = []
    if v.get("forced"):
        out.append(
            "FORCED COMPARISON (--force): the inputs are not comparable: "
            + "; ".join(v["forced"])
            + ". Differences below may reflect the data, not the models."
        )
    return out + [_weak_sentence(w) for w in v.get("weak", [])]


def verdict_text(v: dict[str, Any], caveats: bool = True) -> str:
    """Plain-language paragraphs from :func:`compute_verdict`'s structured output."""
    models = v["models"]
    if not models:
        return "No model has results: nothing can be compared."
    paras: list[str] = list(caveat_sentences(v)) if caveats else []
    if v["clean"]:
        line = (
            "Clean accuracy: "
            + ", ".join(f"{m} {_pp(a, False)}%" for m, a in sorted(v["clean"].items()))
            + "."
        )
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
                    f"{c['model_b']} after Holm correction ({_pp(c['diff'])} pp, {_ci(c)})."
                )
        paras.append(line)
    if not v["norms"]:
        paras.append("No bounded attack finished, so robust accuracy cannot be compared.")
    for norm, nv in v["norms"].items():
        head, accs = nv["headline_eps"], nv["robust_acc"]
        intro = _norm_intro(norm, nv)
        if len(accs) < 2:
            paras.append(
                intro + " Only one model has results under this norm, so there is nothing to compare."
            )
            continue
        if not any(e > EPS_TOL for e in nv["eps"]):
            paras.append(
                intro + " Only eps 0 was evaluated, which equals clean accuracy: no robustness comparison."
            )
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
                    f"At {eps_label(hc['eps'])}, no significant difference between {a} and {b} after Holm "
                    f"correction ({_pp(hc['diff'])} pp, {_ci(hc)})."
                )
            clean = [c for c in v["clean_comparisons"] if (c["model_a"], c["model_b"]) == (a, b)]
            if len(accs) == 2:  # with more models the per-eps detail is in the tables and verdict.json
                parts.append(holm_sentence(clean, cs))
        paras.append(" ".join(parts))
    paras += unbounded_text(v, _focus)
    if len(models) >= 2 and v["clean"] and v["norms"]:
        paras.append(
            "Robust accuracy counts clean mistakes as failures, so at small eps a gap partly repeats the "
            "clean-accuracy gap; the accuracy among clean-correct images (tables, curves) separates the two."
        )
    return "\n\n".join(paras)
