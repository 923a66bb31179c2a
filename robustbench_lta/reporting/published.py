"""The report's "Published vs measured" page: what a model's publisher reported beside what this
sweep measured (RobustBench's clean and AutoAttack accuracy for zoo models).

The numbers come from the manifest's model cards (robustbench_lta.sources); the comparison itself
is :func:`robustbench_lta.sources.published.published_comparison`, the one the sweep writes to
``published.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..sources.published import published_comparison
from .load import ResultsBundle, eps_label
from .pages import PageSink
from .tables import write_table

TITLE = "Published vs measured"


def published_table(bundle: ResultsBundle) -> pd.DataFrame:
    """One row per model and metric for every model whose card carries published numbers."""
    parts = []
    for label, folder in bundle.model_folder.items():
        suffix = f" [{folder}]"
        original = label[: -len(suffix)] if label.endswith(suffix) else label
        models = (bundle.manifests.get(folder) or {}).get("models") or {}
        card = (models.get(original) or {}).get("card") if isinstance(models, dict) else None
        if card and card.get("published"):
            rows = bundle.summary[bundle.summary["model"] == label]
            parts.append(published_comparison(rows, {label: card}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _display(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": df["model"],
        "metric": [m if m == "clean" else f"robust ({n}, eps {eps_label(e)})"
                   for m, n, e in zip(df["metric"], df["norm"], df["eps"], strict=True)],
        "published %": df["published"].map(_pct),
        "measured %": df["measured"].map(_pct),
        "difference (pp)": df["difference"].map(lambda v: "-" if math.isnan(v) else f"{100 * v:+.1f}"),
        "n": df["n"].astype(int),
        "measured by": df["measured_by"],
    })


def published_section(sink: PageSink, bundle: ResultsBundle, files: Path) -> list[Path]:
    """A table page (and published_vs_measured.csv/.md) when any model has published numbers."""
    df = published_table(bundle)
    if df.empty:
        return []
    origins = "; ".join(sorted({str(o) for o in df["origin"] if o}))
    small = int(df["n"][df["n"] > 0].min()) if (df["n"] > 0).any() else 0
    half = 100 * 0.98 / max(math.sqrt(small), 1)  # the widest 95% interval half-width at n, in pp
    note = (f"Publisher's numbers from {origins}. Measured on n samples here "
            f"(smallest n = {small}: a 95% interval is about +-{half:.0f} pp); "
            "a large gap means different data, preprocessing, weights or a weaker attack.")
    sink.table_pages(TITLE, _display(df), note=note, wrap={"measured by": 34, "model": 22})
    return write_table(df, files, "published_vs_measured")
