"""Published vs measured: a model card's reported accuracies beside what the sweep measured.

One row per model and metric: the clean accuracy, and the robust accuracy at the published budget
(measured by the same attack when the sweep ran it, and by the worst case over that norm's
attacks). ``difference`` is measured minus published, in accuracy points (fractions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

PUBLISHED_COLUMNS = ["model", "source", "metric", "norm", "eps", "measured_by", "n", "published", "measured",
                     "difference", "origin"]
_WORST = "worst-case"


def _rows_for(label: str, card: Mapping[str, Any], summary: pd.DataFrame) -> list[dict[str, Any]]:
    pub = card.get("published") or {}
    mine = summary[summary["model"] == label]
    base = {"model": label, "source": card.get("source", ""), "origin": pub.get("origin", "")}
    rows: list[dict[str, Any]] = []
    if pub.get("clean_acc") is not None:
        measured = float(mine["clean_acc"].iloc[0]) if len(mine) else math.nan
        n = int(mine["n"].iloc[0]) if len(mine) else 0
        rows.append({**base, "metric": "clean", "norm": "", "eps": math.nan, "measured_by": "clean forward",
                     "n": n, "published": float(pub["clean_acc"]), "measured": measured,
                     "difference": measured - float(pub["clean_acc"])})
    if pub.get("robust_acc") is not None and pub.get("eps") is not None:
        eps, norm = float(pub["eps"]), str(pub.get("norm") or "")
        near = mine[(mine["norm"] == norm) & ((mine["eps"] - eps).abs() < 1e-9) & (mine["status"] == "ok")]
        found = False
        for attack in (pub.get("attack") or "autoattack", _WORST):
            hit = near[near["attack"] == attack]
            if len(hit):
                found = True
                r = hit.iloc[0]
                by = attack if attack != _WORST else "worst case over " + ", ".join(
                    sorted(set(near["attack"]) - {_WORST}))
                rows.append({**base, "metric": "robust", "norm": norm, "eps": eps, "measured_by": by,
                             "n": int(r["n"]), "published": float(pub["robust_acc"]),
                             "measured": float(r["robust_acc"]),
                             "difference": float(r["robust_acc"]) - float(pub["robust_acc"])})
        if not found:
            rows.append({**base, "metric": "robust", "norm": norm, "eps": eps,
                         "measured_by": f"not measured (no {norm} attack at eps {eps * 255:.3g}/255)",
                         "n": 0, "published": float(pub["robust_acc"]), "measured": math.nan,
                         "difference": math.nan})
    return rows


def published_comparison(summary: pd.DataFrame,
                         cards: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """Rows of published vs measured for every model whose card carries published numbers."""
    rows: list[dict[str, Any]] = []
    for label, card in cards.items():
        if card and card.get("published"):
            rows += _rows_for(label, card, summary)
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)
