"""The report's tables: clean accuracy, robust accuracy / attack success / seconds per attack x eps,
unbounded attacks' perturbation norms, cells that did not finish, and the sanity checks.

All are written as CSV and Markdown; the PDF prints all but :data:`OFF_PAPER` and says where those are.

Each table is a DataFrame (numbers as percentages where the column says so) written as CSV (full
precision) and Markdown beside the PDF, and rendered as table pages in it. Cells that failed or
were invalid show their status instead of a number, and their messages are listed in full.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..results import STATUSES_NOT_OK
from .load import EPS_TOL, WORST_CASE, ResultsBundle, eps_label, wilson

SANITY_EXPLAIN = {
    "deterministic": (
        "Two forwards of the same batch disagree: dropout/batch-norm left in training mode or "
        "non-deterministic layers make attacks and accuracies irreproducible."
    ),
    "finite-logits": (
        "The model outputs NaN/inf: gradients and predictions are meaningless; "
        "fix the model or its input scale."
    ),
    "returns-logits": (
        "Outputs look like probabilities or log-probabilities, not logits: cross-entropy attacks "
        "then see flat gradients and robustness is overestimated."
    ),
    "zero-or-nonfinite-gradients": (
        "Many samples have zero or non-finite input gradients: gradient masking "
        "(e.g. saturated softmax, non-differentiable layers) makes white-box attacks weak."
    ),
    "near-chance-at-large-eps": (
        "Accuracy stays above chance at a huge eps where any input can be reached: the "
        "attack is not working (gradient masking or a bug), so robust accuracy is overestimated."
    ),
    "eps0-equals-clean": (
        "Accuracy at eps 0 differs from clean accuracy: the evaluation is not deterministic or the "
        "attack perturbs beyond its budget."
    ),
    "monotone-in-eps": (
        "Robust accuracy rises with a larger budget: a stronger attack should never do worse, so "
        "the attack is unreliable (random restarts, too few steps or gradient masking)."
    ),
    "iterative-at-least-single-step": (
        "FGSM stronger than PGD: an iterative attack should break at least what a "
        "single step breaks; possible gradient masking or too few/too small steps."
    ),
    "white-box-at-least-black-box": (
        "A black-box or random attack breaks samples that no iterative white-box attack breaks: "
        "gradients are misleading (gradient masking), so white-box numbers overestimate robustness."
    ),
}
STATUS_COLOURS = {"pass": "#c8e6c9", "warn": "#ffe0b2", "fail": "#ffcdd2"}
#: tables written beside the PDF (CSV, Markdown) but not printed in it, and what each holds: on paper
#: they repeated another table (attack success = 100 minus robust accuracy among clean-correct
#: images) or helped little (timings; areas, which the curves' legends give)
OFF_PAPER = {
    "attack_success_rate": "attack success rate (100 minus the robust accuracy among clean-correct images)",
    "seconds_per_cell": "seconds per cell",
    "curve_auc": "area under each robustness curve (also in the curves' legends)",
}


def _pct(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _cell_text(row: pd.Series, col: str, fmt: str = "pct") -> str:
    if row["status"] != "ok":
        return str(row["status"]).upper()
    v = float(row[col])
    if fmt == "pct":
        return _pct(v)
    if fmt == "sec":
        return "" if not np.isfinite(v) else f"{v:.2f}"
    return "" if not np.isfinite(v) else f"{v:.4g}"


def clean_table(bundle: ResultsBundle) -> pd.DataFrame:
    """Clean accuracy (%) per model with n, dataset and folder."""
    s = bundle.summary
    rows = []
    for m in bundle.models:
        d = s[s["model"] == m]
        fin = d[np.isfinite(d["clean_acc"].astype(float))]
        rows.append(
            {
                "model": m,
                "dataset": ", ".join(sorted(set(d["dataset"].astype(str)))),
                "n": int(d["n"].max()) if len(d) else 0,
                "clean_acc_%": round(100 * float(fin["clean_acc"].iloc[0]), 2) if len(fin) else np.nan,
                "folder": bundle.model_folder.get(m, ""),
            }
        )
    return pd.DataFrame(rows)


def _pivot(bundle: ResultsBundle, col: str, fmt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy numbers for CSV, display matrix) for one summary column over the bounded cells.

    The CSV has one row per attack x model x eps (``eps`` in /255 text, ``eps_01`` on the [0,1]
    scale, the value, for robust accuracy its 95% Wilson interval, and the cell status). The display
    has one row per attack x model and one column per eps, which keeps a whole sweep on one page.
    """
    s = bundle.summary
    b = s[np.isfinite(s["eps"].astype(float))].copy()
    b["_wc"] = b["attack"] == WORST_CASE
    b = b.sort_values(["norm", "_wc", "attack", "model", "eps"], kind="stable")
    clean = b["clean_acc"].astype(float)
    # among clean-correct samples: robust / clean (both shares of the same n)
    safe = clean.where(clean > 0, 1.0)
    b["cond_robust_acc"] = np.where(clean > 0, b["robust_acc"].astype(float) / safe, np.nan)
    name = {
        "robust_acc": "robust_acc_%",
        "attack_success_rate": "attack_success_rate_%",
        "cond_robust_acc": "robust_among_clean_correct_%",
    }.get(col, col)
    num_rows = []
    for r in b.itertuples(index=False):
        ok = r.status == "ok"
        v = float(getattr(r, col)) if ok else np.nan
        row = {
            "attack": r.attack,
            "norm": r.norm,
            "model": r.model,
            "eps": eps_label(r.eps),
            "eps_01": r.eps,
            "n": int(r.n),
            name: round(100 * v, 3) if fmt == "pct" and np.isfinite(v) else v,
        }
        if col in ("robust_acc", "cond_robust_acc"):
            k = r.n if col == "robust_acc" else round(float(r.clean_acc) * r.n)
            lo, hi = wilson(v * k, k) if np.isfinite(v) else (np.nan, np.nan)
            row["ci_lo_%"], row["ci_hi_%"] = round(100 * lo, 3), round(100 * hi, 3)
            if col == "cond_robust_acc":
                row["n_clean_correct"] = int(k)
        row["status"] = r.status
        num_rows.append(row)
    num = pd.DataFrame(num_rows)
    eps_vals: list[float] = []
    for e in sorted(set(b["eps"].astype(float))):
        if not eps_vals or abs(e - eps_vals[-1]) > EPS_TOL:
            eps_vals.append(e)
    txt_rows = []
    for (attack, norm, model), g in b.groupby(["attack", "norm", "model"], sort=False):
        row = {"attack": attack, "norm": norm, "model": model}
        for e in eps_vals:
            cell = g[(g["eps"] - e).abs() <= EPS_TOL]
            row[eps_label(e)] = "-" if cell.empty else _cell_text(cell.iloc[0], col, fmt)
        txt_rows.append(row)
    return num, pd.DataFrame(txt_rows)


def unbounded_table(bundle: ResultsBundle) -> pd.DataFrame:
    """Minimal-perturbation (unbounded) attacks: robust accuracy, success rate and perturbation norms."""
    s = bundle.summary
    u = s[~np.isfinite(s["eps"].astype(float))]
    rows = []
    for r in u.sort_values(["attack", "model"]).itertuples(index=False):
        ok = r.status == "ok"
        rows.append(
            {
                "attack": r.attack,
                "norm": r.norm,
                "model": r.model,
                "n": int(r.n),
                "robust_acc_%": round(100 * r.robust_acc, 2) if ok and np.isfinite(r.robust_acc) else np.nan,
                "success_rate_%": (
                    round(100 * r.attack_success_rate, 2)
                    if ok and np.isfinite(r.attack_success_rate)
                    else np.nan
                ),
                "median_norm": r.median_norm if ok else np.nan,
                "median_norm_x255": r.median_norm * 255 if ok and np.isfinite(r.median_norm) else np.nan,
                "mean_norm": r.mean_norm if ok else np.nan,
                "max_norm": r.max_norm if ok else np.nan,
                "seconds": round(float(r.seconds), 2) if np.isfinite(r.seconds) else np.nan,
                "status": r.status,
            }
        )
    return pd.DataFrame(rows)


def problem_table(bundle: ResultsBundle) -> pd.DataFrame:
    """Every cell that did not finish (failed or invalid), with the engine's message."""
    s = bundle.summary
    bad = s[s["status"].isin(STATUSES_NOT_OK)]
    return pd.DataFrame(
        {
            "model": bad["model"].astype(str),
            "attack": bad["attack"].astype(str),
            "eps": [eps_label(e) for e in bad["eps"]],
            "status": bad["status"].astype(str),
            "message": bad["message"].astype(str),
        }
    ).reset_index(drop=True)


def sanity_table(bundle: ResultsBundle) -> pd.DataFrame:
    """The sanity checks as shown: check, model, attack, eps (/255), status, value, message."""
    if bundle.sanity is None or bundle.sanity.empty:
        return pd.DataFrame(columns=["check", "model", "attack", "eps", "status", "value", "message"])
    d = bundle.sanity.copy()
    order = {"fail": 0, "warn": 1, "pass": 2}
    d["_o"] = d["status"].map(order).fillna(3)
    d = d.sort_values(["_o", "check", "model", "attack", "eps"], kind="stable")
    return pd.DataFrame(
        {
            "check": d["check"].astype(str),
            "model": d["model"].astype(str),
            "attack": d.get("attack", pd.Series([""] * len(d))).fillna("").astype(str),
            "eps": [eps_label(float(e)) if pd.notna(e) else "-" for e in d["eps"]],
            "status": d["status"].astype(str),
            "value": [f"{v:.3g}" if pd.notna(v) else "" for v in d["value"]],
            "message": d["message"].fillna("").astype(str),
        }
    ).reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table (no extra dependency); NaN shows as empty."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.6g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    """Write ``name.csv`` and ``name.md``; return both paths."""
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    df.to_csv(csv, index=False)
    md.write_text(to_markdown(df))
    return [csv, md]


def all_tables(bundle: ResultsBundle) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None, str]]:
    """name -> (numbers for CSV/Markdown, display texts or None, one-line caption), in report order."""
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame | None, str]] = {}
    out["clean_accuracy"] = (clean_table(bundle), None, "Clean accuracy (%) per model.")
    num, txt = _pivot(bundle, "robust_acc", "pct")
    out["robust_accuracy"] = (
        num,
        txt,
        "Robust accuracy (%) per attack and model (rows) and eps (columns); the CSV adds 95% Wilson "
        "intervals. FAILED/INVALID: the cell did not finish (see 'cells not ok'); NOT-APPLICABLE: the "
        "attack does not apply to that model; '-': not run.",
    )
    num, txt = _pivot(bundle, "cond_robust_acc", "pct")
    out["robust_among_clean_correct"] = (
        num,
        txt,
        "Robust accuracy among clean-correct images (%): robust / clean accuracy, the share of the images a "
        "model got right that the attacks could not break (separates robustness from accuracy); the CSV "
        "adds n and 95% Wilson intervals.",
    )
    num, txt = _pivot(bundle, "attack_success_rate", "pct")
    out["attack_success_rate"] = (
        num,
        txt,
        "Attack success rate (%): share of clean-correct samples the attack fooled.",
    )
    out["unbounded_attacks"] = (
        unbounded_table(bundle),
        None,
        "Unbounded (minimal-perturbation) attacks: "
        "perturbation norms over successful adversarial examples (x255 = pixel units).",
    )
    num, txt = _pivot(bundle, "seconds", "sec")
    out["seconds_per_cell"] = (num, txt, "Seconds per cell (worst-case rows: cumulative over the attacks).")
    out["cells_not_ok"] = (
        problem_table(bundle),
        None,
        "Cells that did not finish, with the engine's message.",
    )
    return out
