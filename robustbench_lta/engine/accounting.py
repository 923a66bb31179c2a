"""From per-sample records to summary rows: per-cell rows and the worst case over attacks.

Definitions (the same as AutoAttack / RobustBench report them):
- robust accuracy at eps: share of samples classified correctly clean AND not broken by the attack;
- attack success rate: share of clean-correct samples the attack broke;
- worst case over attacks, per norm: a sample is robust at eps only if no attack of that norm broke
  it at any budget <= eps (a perturbation inside a smaller ball also lies in the larger one), and no
  minimal-perturbation attack of that norm found an adversarial example of norm <= eps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "model", "dataset", "attack", "norm", "eps", "n", "clean_acc", "robust_acc", "attack_success_rate",
    "mean_norm", "median_norm", "max_norm", "seconds", "status", "message",
]
SAMPLE_COLUMNS = ["model", "attack", "eps", "index", "label", "clean_pred", "adv_pred", "norm",
                  "attacked", "broken"]
WORST_CASE = "worst-case"


def summary_row(*, model: str, dataset: str, attack: str, norm: str, eps: float, label: np.ndarray,
                clean_pred: np.ndarray, adv_pred: np.ndarray | None, norms: np.ndarray | None,
                seconds: float, status: str = "ok", message: str = "") -> dict[str, Any]:
    n = int(len(label))
    correct = clean_pred == label
    row: dict[str, Any] = {
        "model": model, "dataset": dataset, "attack": attack, "norm": norm, "eps": float(eps), "n": n,
        "clean_acc": float(correct.mean()) if n else math.nan,
        "robust_acc": math.nan, "attack_success_rate": math.nan,
        "mean_norm": math.nan, "median_norm": math.nan, "max_norm": math.nan,
        "seconds": float(seconds), "status": status, "message": message,
    }
    if status != "ok" or adv_pred is None or n == 0:
        return row
    broken = adv_pred != label
    robust = correct & ~broken
    row["robust_acc"] = float(robust.mean())
    if correct.any():
        fooled = correct & broken
        row["attack_success_rate"] = float(fooled.sum() / correct.sum())
        if norms is not None and fooled.any():
            found = norms[fooled]
            row["mean_norm"] = float(found.mean())
            row["median_norm"] = float(np.median(found))
            row["max_norm"] = float(found.max())
    return row


def worst_case_rows(summary: pd.DataFrame, samples: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per model, norm and eps: the minimum over that norm's attacks, per sample."""
    rows: list[dict[str, Any]] = []
    ok = summary[(summary["status"] == "ok") & (summary["attack"] != WORST_CASE)]
    if ok.empty or samples.empty:
        return rows
    for (model, norm), cells in ok.groupby(["model", "norm"], sort=True):
        if norm not in ("linf", "l2", "l0"):
            continue
        bounded = cells[np.isfinite(cells["eps"])]
        grid = sorted(set(bounded["eps"].tolist()))
        if not grid:
            continue
        attacks = sorted(set(cells["attack"]))
        s = samples[(samples["model"] == model) & samples["attack"].isin(attacks)]
        index = np.sort(s["index"].unique())
        pos = {int(i): k for k, i in enumerate(index)}
        first = s.drop_duplicates("index").set_index("index").loc[index]
        label = first["label"].to_numpy()
        clean_pred = first["clean_pred"].to_numpy()
        correct = clean_pred == label
        # earliest eps at which each sample is broken, over all attacks of this norm
        broken_at = np.full(len(index), np.inf)
        valid = s[s["attack"].isin(attacks)]
        for (_attack, eps), part in valid.groupby(["attack", "eps"], sort=False):
            hit = part[part["broken"].to_numpy()]
            if hit.empty:
                continue
            where = np.fromiter((pos[int(i)] for i in hit["index"]), dtype=np.int64, count=len(hit))
            if math.isinf(eps):  # minimal-perturbation attack: broken from its norm on
                at = hit["norm"].to_numpy(dtype=float)
            else:
                at = np.full(len(hit), float(eps))
            np.minimum.at(broken_at, where, at)
        seconds_by_eps = bounded.groupby("eps")["seconds"].sum()
        dataset = str(cells["dataset"].iloc[0])
        for eps in grid:
            broken = broken_at <= eps + 1e-6
            adv_pred = np.where(broken, -1, label)  # only "broken or not" matters below
            adv_pred = np.where(~correct, clean_pred, adv_pred)
            row = summary_row(
                model=model, dataset=dataset, attack=WORST_CASE, norm=norm, eps=eps, label=label,
                clean_pred=clean_pred, adv_pred=adv_pred, norms=None,
                seconds=float(seconds_by_eps[seconds_by_eps.index <= eps].sum()),
                message="min over " + ", ".join(attacks),
            )
            rows.append(row)
    return rows
