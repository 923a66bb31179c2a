"""The results folder: its one definition, imported by the engine, the reporting layer and benchmarks.

What lives here and nowhere else:
- the table columns (``SUMMARY_COLUMNS``, ``SAMPLE_COLUMNS``, ``ATTENTION_COLUMNS``,
  ``SANITY_COLUMNS``), their dtypes and the status values of a cell;
- the worst-case rule (:func:`broken_at_eps`, :func:`worst_case_rows`), implemented once and
  vectorised;
- the file layout (:class:`ResultsLayout`): where unit files, tables, attention maps, explorer images,
  the lock and the manifest are.

Definitions (the same as AutoAttack / RobustBench report them):
- robust accuracy at eps: share of samples classified correctly clean AND not broken by the attack;
- attack success rate: share of clean-correct samples the attack broke;
- conditional robust accuracy: share of clean-correct samples the attack did not break;
- worst case over attacks, per norm: a sample is robust at eps only if no attack of that norm broke
  it at any budget <= eps (a perturbation inside a smaller ball also lies in the larger one), and no
  minimal-perturbation attack of that norm found an adversarial example of norm <= eps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = 2
WORST_CASE = "worst-case"
BOUNDED_NORMS = ("linf", "l2", "l0")
EPS_TOL = 1e-6

#: a cell's status: ``ok`` (counted), ``failed`` (the attack raised: retried on the next run),
#: ``invalid`` (a contract violation: output outside the budget, the model changed, ...; kept
#: unless the user asks ``--retry-invalid``), ``not-applicable`` (the attack raised
#: ``plugins.NotApplicable``: it cannot attack this model at all, e.g. an attention attack on a
#: model without attention; kept, never retried, not an error of the sweep).
STATUS_OK, STATUS_FAILED, STATUS_INVALID = "ok", "failed", "invalid"
STATUS_NOT_APPLICABLE = "not-applicable"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_INVALID, STATUS_NOT_APPLICABLE)
#: statuses that make a sweep incomplete (the CLI exits 3); the others are results or notes
STATUSES_NOT_OK = (STATUS_FAILED, STATUS_INVALID)
#: which status a cell shows when its budgets or shards differ: the first of these present, else ok
STATUS_PRECEDENCE = (STATUS_INVALID, STATUS_FAILED, STATUS_NOT_APPLICABLE)

SUMMARY_COLUMNS = [
    "model", "dataset", "attack", "norm", "eps", "n", "clean_acc", "robust_acc", "attack_success_rate",
    "mean_norm", "median_norm", "max_norm", "seconds", "forward", "backward", "status", "message", "skipped",
]
SAMPLE_COLUMNS = ["model", "attack", "eps", "index", "label", "clean_pred", "adv_pred", "norm",
                  "attacked", "broken", "skipped_by"]
SAMPLE_DTYPES = {"model": "object", "attack": "object", "eps": "float64", "index": "int64",
                 "label": "int64", "clean_pred": "int64", "adv_pred": "int64", "norm": "float64",
                 "attacked": "bool", "broken": "bool", "skipped_by": "object"}
#: how readers label a cascade row (an attack's row that counts samples earlier attacks broke)
CASCADE_SUFFIX = " (cascade)"
#: columns added after format 2's first folders; readers fill them with these values when absent
COLUMN_DEFAULTS = {"skipped_by": "", "skipped": 0}
ATTENTION_COLUMNS = ["model", "attack", "eps", "index", "level", "js_divergence", "box_mass_clean",
                     "box_mass_adv"]
SANITY_COLUMNS = ["check", "model", "attack", "eps", "status", "value", "message"]
#: columns that measure the run, not its answer (two runs of one sweep agree on everything else)
TIMING_COLUMNS = ("seconds",)

#: explorer images (``explorer/MODEL/ATTACK.npz``, one per cell): the first ``explorer_samples``
#: sample positions of the cell (the same samples for every model and attack), for the HTML report.
#: ``clean`` (k,H,W,C) uint8; ``delta`` (E,k,H,W,C) int8, the perturbation ``adv - clean`` on the
#: [0,1] scale as ``delta / 127 * delta_max``; ``delta_max`` (E,k) float32; ``stored`` (E,k) bool
#: (False: no adversarial example of this attack at that eps: misclassified clean, skipped under
#: cascade accounting, or the budget failed); ``index``/``position``/``label`` (k,) int64; ``eps``
#: (E,) float64; ``model``/``attack``/``key`` 0-d str; attention models add ``clean_level{j}``
#: (k,h,w) and ``adv_level{j}`` (E,k,h,w) float16 (each map sums to 1).
EXPLORER_KEYS = ("clean", "delta", "delta_max", "stored", "index", "position", "label", "eps", "model",
                 "attack", "key")
#: the int8 scale of ``delta``: ``delta_max`` maps to this value
EXPLORER_DELTA_LEVELS = 127

def figure_eps_indices(eps: Sequence[float]) -> list[int]:
    """Indices of the budgets the attention figure (``attention/MODEL.npz``) stores and the report
    shows, ascending: at most three, the smallest nonzero, the middle and the largest. Every other
    budget would cost a small sweep an attack and a forward with maps for nothing."""
    nonzero = [i for i, e in enumerate(eps) if e > 0]
    if len(nonzero) <= 3:
        return nonzero
    return [nonzero[0], nonzero[len(nonzero) // 2], nonzero[-1]]


TABLES = ("summary", "samples", "sanity", "attention")
CSV_TABLES = ("summary", "sanity")


def safe_name(text: str) -> str:
    """A file-name-safe version of a model or attack label."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:80] or "x"


@dataclass(frozen=True)
class ResultsLayout:
    """Where everything lives in one results folder."""

    root: Path

    @property
    def units(self) -> Path:
        return self.root / "units"

    @property
    def attention_dir(self) -> Path:
        return self.root / "attention"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def table(self, name: str, suffix: str = ".parquet") -> Path:
        return self.root / f"{name}{suffix}"

    def cell_dir(self, cell_id: str) -> Path:
        return self.units / cell_id

    def attention_npz(self, model: str) -> Path:
        return self.attention_dir / f"{safe_name(model)}.npz"

    @property
    def explorer_dir(self) -> Path:
        return self.root / "explorer"

    def explorer_npz(self, model: str, attack: str) -> Path:
        """One cell's explorer images (:data:`EXPLORER_KEYS`), assembled from its units' files."""
        return self.explorer_dir / safe_name(model) / f"{safe_name(attack)}.npz"

    def unit_explorer_npz(self, cell_id: str, unit_id: str) -> Path:
        """A unit's share of its cell's explorer images (written before the unit's json marker)."""
        return self.cell_dir(cell_id) / f"{unit_id}.explorer.npz"


def empty_frame(columns: list[str]) -> pd.DataFrame:
    dtypes = {**SAMPLE_DTYPES}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in columns})


# ------------------------------------------------------------------------------------ summary rows
def summary_row(*, model: str, dataset: str, attack: str, norm: str, eps: float, label: np.ndarray,
                clean_pred: np.ndarray, adv_pred: np.ndarray | None, norms: np.ndarray | None,
                seconds: float, forward: int = 0, backward: int = 0, status: str = STATUS_OK,
                message: str = "", skipped: int = 0) -> dict[str, Any]:
    n = int(len(label))
    correct = clean_pred == label
    row: dict[str, Any] = {
        "model": model, "dataset": dataset, "attack": attack, "norm": norm, "eps": float(eps), "n": n,
        "clean_acc": float(correct.mean()) if n else math.nan,
        "robust_acc": math.nan, "attack_success_rate": math.nan,
        "mean_norm": math.nan, "median_norm": math.nan, "max_norm": math.nan,
        "seconds": float(seconds), "forward": int(forward), "backward": int(backward),
        "status": status, "message": message, "skipped": int(skipped),
    }
    if status != STATUS_OK or adv_pred is None or n == 0:
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


def conditional_robust_acc(summary: pd.DataFrame) -> pd.Series:
    """Robust accuracy among clean-correct samples (separates robustness from accuracy)."""
    return summary["robust_acc"] / summary["clean_acc"].where(summary["clean_acc"] > 0)


# ------------------------------------------------------------------------------------ worst case
def broken_at_eps(samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The smallest budget at which each sample is broken, over all attacks in ``samples``.

    ``samples`` holds one model's rows of one norm (columns of :data:`SAMPLE_COLUMNS`). Returns
    ``(index, label, clean_pred, broken_at)`` sorted by index where ``broken_at`` is ``inf`` for a
    sample no attack broke; a bounded attack breaks at its eps, a minimal-perturbation attack
    (eps ``inf``) at the norm it found. One vectorised pass.
    """
    index = samples["index"].to_numpy(dtype=np.int64)
    uniq, inverse = np.unique(index, return_inverse=True)
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(index))[::-1]  # the first row of each sample
    label = samples["label"].to_numpy(dtype=np.int64)[first]
    clean_pred = samples["clean_pred"].to_numpy(dtype=np.int64)[first]
    eps = samples["eps"].to_numpy(dtype=np.float64)
    at = np.where(np.isinf(eps), samples["norm"].to_numpy(dtype=np.float64), eps)
    hit = samples["broken"].to_numpy(dtype=bool)
    broken_at = np.full(len(uniq), np.inf)
    np.minimum.at(broken_at, inverse[hit], at[hit])
    return uniq, label, clean_pred, broken_at


def worst_case_rows(summary: pd.DataFrame, samples: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per model, norm and eps: the per-sample minimum over that norm's ``ok`` attacks.

    ``summary`` holds the per-attack rows and ``samples`` the per-sample rows of the same models
    (a caller with many models passes one model at a time: memory stays one model's rows). The
    message names exactly the attacks each worst case was taken over.
    """
    rows: list[dict[str, Any]] = []
    ok = summary[(summary["status"] == STATUS_OK) & (summary["attack"] != WORST_CASE)]
    if ok.empty or samples.empty:
        return rows
    for (model, norm), cells in ok.groupby(["model", "norm"], sort=True):
        if norm not in BOUNDED_NORMS:
            continue
        bounded = cells[np.isfinite(cells["eps"])]
        grid = sorted(set(bounded["eps"].tolist()))
        if not grid:
            continue
        ok_pairs = cells[["attack", "eps"]].drop_duplicates()
        s = samples[samples["model"] == model].merge(ok_pairs, on=["attack", "eps"], how="inner")
        if s.empty:
            continue
        _index, label, clean_pred, broken_at = broken_at_eps(s)
        correct = clean_pred == label
        seconds_by_eps = bounded.groupby("eps")[["seconds", "forward", "backward"]].sum()
        dataset = str(cells["dataset"].iloc[0])
        unbounded = sorted(set(cells[~np.isfinite(cells["eps"])]["attack"]))
        for eps in grid:
            # name exactly the attacks this row was taken over (an attack failed at eps is not one)
            names = sorted(set(bounded[bounded["eps"] <= eps + EPS_TOL]["attack"]) | set(unbounded))
            broken = broken_at <= eps + EPS_TOL
            adv_pred = np.where(broken, -1, label)  # only "broken or not" matters below
            adv_pred = np.where(~correct, clean_pred, adv_pred)
            upto = seconds_by_eps[seconds_by_eps.index <= eps]
            rows.append(summary_row(
                model=model, dataset=dataset, attack=WORST_CASE, norm=norm, eps=eps, label=label,
                clean_pred=clean_pred, adv_pred=adv_pred, norms=None,
                seconds=float(upto["seconds"].sum()), forward=int(upto["forward"].sum()),
                backward=int(upto["backward"].sum()), message="min over " + ", ".join(names)))
    return rows


def cell_summary_rows(samples: pd.DataFrame, *, model: str, dataset: str, attack: str, norm: str,
                      label: np.ndarray, clean_pred: np.ndarray, eps_status: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
    """Summary rows of one cell (one attack on one model) from its per-sample rows.

    ``label`` and ``clean_pred`` cover every sample of the cell (they give ``n`` and clean
    accuracy even where the attack failed); ``samples`` holds the rows of the ``ok`` budgets;
    ``eps_status`` holds, per eps of the cell in order, ``eps``, ``status``, ``message``,
    ``seconds``, ``forward`` and ``backward`` (already combined over the cell's shards).
    """
    rows = []
    for st in eps_status:
        eps = float(st["eps"])
        ok = st["status"] == STATUS_OK
        part = samples[samples["eps"] == eps] if ok else None
        skipped, message = 0, st["message"]
        if ok and "skipped_by" in part.columns:
            by = part["skipped_by"].astype(str)
            counts = by[by != ""].value_counts(sort=False)
            skipped = int(counts.sum())
            if skipped:
                message = cascade_message(skipped, {str(k): int(v) for k, v in counts.items()})
        rows.append(summary_row(
            model=model, dataset=dataset, attack=attack, norm=norm, eps=eps,
            label=part["label"].to_numpy(dtype=np.int64) if ok else label,
            clean_pred=part["clean_pred"].to_numpy(dtype=np.int64) if ok else clean_pred,
            adv_pred=part["adv_pred"].to_numpy(dtype=np.int64) if ok else None,
            norms=part["norm"].to_numpy(dtype=np.float64) if ok else None,
            seconds=st["seconds"], forward=st["forward"], backward=st["backward"],
            status=st["status"], message=message, skipped=skipped))
    return rows


def cascade_message(skipped: int, by: dict[str, int]) -> str:
    """The summary message of a cascade row: what the attack skipped, and what its figure then means."""
    parts = ", ".join(f"{k}: {v}" for k, v in by.items())
    return (f"cascade: {skipped} clean-correct samples already broken by an earlier attack were not attacked "
            f"({parts}); robust accuracy here is the cascade's up to this attack, not this attack's alone")


def not_applicable_lines(summary: pd.DataFrame) -> list[str]:
    """One line per attack that did not apply to some models (status ``not-applicable``): a note for
    the CLI and the report, not an error (an attention attack in a sweep that also holds baselines)."""
    if "status" not in summary.columns or summary.empty:
        return []
    na = summary[summary["status"].astype(str) == STATUS_NOT_APPLICABLE]
    lines = []
    for attack, g in na.groupby("attack", sort=True):
        models = ", ".join(sorted(set(g["model"].astype(str))))
        lines.append(f"{attack} does not apply to {models} (not-applicable, not retried): "
                     f"{g['message'].iloc[0]}")
    return lines
