"""Compute per model in a report: GMACs per image, and a plain warning when compared models differ > 2x.

The figure comes from the results folder only: the manifest's ``models[label]["gmacs"]`` (if the
engine records it) or the checkpoint card's ``model.gmacs`` (written by training since this
version). Models with neither show "unknown".

Hooks for the report (reporting/pdf.py, ``_summary_text``): append ``compute_lines(bundle)`` to the
"WHAT WAS COMPARED" list, and put ``compute_warning(bundle)`` (when not None) into the verdict text.
"""

from __future__ import annotations

from typing import Any

from .load import ResultsBundle

__all__ = ["COMPUTE_RATIO", "compute_lines", "compute_warning", "model_gmacs_from_results"]

#: compared models whose GMACs differ by more than this factor get a warning in the verdict
COMPUTE_RATIO = 2.0


def model_gmacs_from_results(bundle: ResultsBundle) -> dict[str, float | None]:
    """GMACs per image of every model of the bundle, from its manifest entry or checkpoint card."""
    out: dict[str, float | None] = {}
    for m in bundle.models:
        man = bundle.manifests.get(bundle.model_folder.get(m, ""), {})
        info: dict[str, Any] = (man.get("models") or {}).get(m.split(" [")[0]) or {}
        value = info.get("gmacs")
        if value is None:
            value = ((info.get("card") or {}).get("model") or {}).get("gmacs")
        try:
            out[m] = float(value) if value is not None else None
        except (TypeError, ValueError):
            out[m] = None
    return out


def compute_lines(bundle: ResultsBundle) -> list[str]:
    """One line per model for the "what was compared" list: its GMACs per image."""
    g = model_gmacs_from_results(bundle)
    lines = ["Compute (GMACs per image, one forward pass):"]
    for m in bundle.models:
        lines.append(f"  {m}: {g[m]:.3g} GMACs" if g[m] is not None else f"  {m}: unknown")
    return lines


def compute_warning(bundle: ResultsBundle, ratio: float = COMPUTE_RATIO) -> str | None:
    """A sentence for the verdict when the compared models' compute differs by more than ``ratio``."""
    g = {m: v for m, v in model_gmacs_from_results(bundle).items() if v is not None and v > 0}
    if len(g) < 2:
        return None
    hi, lo = max(g, key=g.__getitem__), min(g, key=g.__getitem__)
    if g[hi] <= ratio * g[lo]:
        return None
    return (f"Compute differs: {hi} costs {g[hi]:.3g} GMACs per image, {g[hi] / g[lo]:.1f}x the {g[lo]:.3g} "
            f"of {lo}; a robustness or accuracy gap between them may come from resolution and compute, "
            "not attention. Compare with a compute-matched baseline (e.g. vgg16_matched).")
