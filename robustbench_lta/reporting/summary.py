"""Page 1 of the report: the bottom line, n, what to read first, the verdict, what was compared.

Page 1 is read by people who read nothing else, so it leads with the answer in one sentence and the
number of images it rests on, and keeps the rest short: one line per model and per attack (budget
lists as ranges), one line per run. Every figure on it comes from the verdict's numbers
(:func:`~.verdict.compute_verdict`) or the results folder's manifest; nothing is computed here.
"""

from __future__ import annotations

import math
from typing import Any

from ..results import STATUSES_NOT_OK
from ..training.selection import selection_summary
from .compute import compute_warning, model_gmacs_from_results
from .load import WORST_CASE, ResultsBundle, eps_label
from .protocol import model_cards, selection_notes
from .threat import threat_summary
from .verdict_text import bottom_line, n_sentence, verdict_text


def eps_list_text(eps: list[float]) -> str:
    """Budgets as the attack lines show them: ``"0-8/255 (9 budgets)"`` for a unit-step run, else a list."""
    finite = sorted(e for e in eps if math.isfinite(e))
    pix = [e * 255 for e in finite]
    whole = all(abs(v - round(v)) < 1e-4 for v in pix)
    if len(pix) >= 3 and whole and all(abs(b - a - 1) < 1e-4 for a, b in zip(pix, pix[1:], strict=False)):
        return f"{round(pix[0])}-{round(pix[-1])}/255 ({len(pix)} budgets)"
    labels = [eps_label(e) for e in finite]
    if not labels:
        return "none"
    # "2, 8/255": the unit once, at the end
    return ", ".join([*(x.removesuffix("/255") for x in labels[:-1]), labels[-1]])


def attack_lines(bundle: ResultsBundle) -> list[str]:
    """Per attack: norm, kind, parameters and budgets (from the manifests, else the summary)."""
    lines: dict[str, str] = {}
    for man in bundle.manifests.values():
        for name, a in (man.get("attacks") or {}).items():
            bounded = a.get("bounded", True)
            eps = [float(e) for e in a.get("eps") or []]
            eps_txt = "unbounded (minimal perturbation)" if not bounded else "eps " + eps_list_text(eps)
            params = "".join(f", {k}={v}" for k, v in (a.get("params") or {}).items())
            lines.setdefault(name, f"{name} ({a.get('norm', '?')}, {a.get('kind', '?')}{params}): {eps_txt}")
    s = bundle.summary
    for (attack, norm), d in s[s["attack"] != WORST_CASE].groupby(["attack", "norm"]):
        base = str(attack).split(" (")[0]  # a cascade row is its attack's
        if attack not in lines and base not in lines:
            eps = sorted(set(d["eps"].astype(float)))
            eps_txt = "unbounded" if all(math.isinf(e) for e in eps) else "eps " + eps_list_text(eps)
            lines[str(attack)] = f"{attack} ({norm}): {eps_txt} (from summary.parquet; no manifest)"
    return [lines[k] for k in sorted(lines)]


def _same_samples(verdict: dict[str, Any]) -> bool:
    comps = verdict.get("clean_comparisons") or []
    return bool(comps) and all(c["method"] == "paired" for c in comps)


def summary_lead(verdict: dict[str, Any]) -> str:
    """The bottom line and n, shown large at the top of page 1."""
    n = n_sentence(verdict, _same_samples(verdict))
    return bottom_line(verdict) + (f"\n{n}" if n else "")


def summary_text(
    bundle: ResultsBundle, verdict: dict[str, Any], warnings: list[str], threat_notes: list[str] | None = None
) -> str:
    """Page 1's body under the bottom line: headings in capitals, one paragraph or line each."""
    s = bundle.summary
    cards = model_cards(bundle.manifests, bundle.model_folder)
    compute = compute_warning(bundle)  # compared models differing > 2x in compute
    caveats = (
        verdict.get("caveats", [])
        + selection_notes(cards)
        + list(threat_notes or [])  # beyond the training threat model; attacks that do not apply
        + ([compute] if compute else [])
    )
    parts: list[str] = ["READ FIRST", *[f"  - {c}" for c in caveats], ""] if caveats else []
    parts += ["VERDICT", verdict_text(verdict, caveats=False), "", "WHAT WAS COMPARED"]
    gmacs = model_gmacs_from_results(bundle)
    for m in bundle.models:
        d = s[s["model"] == m]
        att = "attention model" if bundle.has_attention.get(m) else "no attention"
        man = bundle.manifests.get(bundle.model_folder.get(m, ""), {})
        info = (man.get("models") or {}).get(m.split(" [")[0]) or {}
        src = f", from {info['source']}" if info.get("source") else ""
        sel = f"; {selection_summary(cards[m])}; {threat_summary(cards[m])}" if m in cards else ""
        cost = f"; {gmacs[m]:.3g} GMACs per image" if gmacs.get(m) is not None else ""
        # the folder only when there are several (the run line names a single one)
        where = f"; folder {bundle.model_folder.get(m, '?')}" if len(bundle.folders) > 1 else ""
        parts.append(f"  {m}: {att}{cost}; {len(d)} result rows{where}{src}{sel}")
    parts.append("  Attacks: " + "; ".join(attack_lines(bundle)) + ".")  # one paragraph, not a line each
    for label, man in bundle.manifests.items():
        ds = man.get("dataset") or {}
        versions = man.get("versions") or {}
        vtxt = ", ".join(
            f"{k} {versions[k]}"
            for k in ("robustbench-lta", "torch", "torchattacks", "foolbox", "python")
            if k in versions
        )
        cfg = man.get("config") or {}
        parts.append(
            f"  Run '{label}': dataset {ds.get('name', ', '.join(bundle.datasets))}, n = "
            f"{ds.get('n', int(s['n'].max()) if len(s) else 0)} samples; device {man.get('device', '?')}; "
            f"seed {man.get('seed', '?')}; accounting {cfg.get('accounting', '?')}; "
            f"started {man.get('started', '?')}, finished {man.get('finished', '?')}; "
            f"git commit {str(man.get('git_commit') or 'unknown')[:12]}; versions: {vtxt or 'unknown'}."
        )
    counts_bad = s[s["status"].isin(STATUSES_NOT_OK)]
    if len(counts_bad):
        parts.append(
            f"{len(counts_bad)} of {len(s)} result rows did not finish (failed/invalid); "
            "they are listed in the Tables section and left out of curves and the verdict."
        )
    if warnings:
        parts += ["", "WHAT IS MISSING OR INCOMPLETE"] + [f"  - {w}" for w in warnings]
    return "\n".join(parts)
