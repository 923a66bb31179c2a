"""Read one or more results folders into one bundle the report sections share.

Reporting reads only what the engine wrote (docs/architecture.md, "Results folder"); it never loads
a model. Several folders are aligned by model label and eps; a label that occurs in more than one
folder is renamed ``"label [folder name]"`` everywhere so no two runs are silently merged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..results import (  # noqa: F401  (one schema)
    BOUNDED_NORMS,
    CASCADE_SUFFIX,
    COLUMN_DEFAULTS,
    EPS_TOL,
    WORST_CASE,
    broken_at_eps,
    safe_name,
)

NORM_NAMES = {"linf": "L-inf", "l2": "L2", "l0": "L0"}  # how norms are named on pages


@dataclass
class ResultsBundle:
    """Everything the report needs, merged over the results folders given.

    ``summary``/``samples``/``sanity``/``attention`` carry the model label after renaming (and a
    ``folder`` column); ``samples``/``sanity``/``attention`` are ``None`` when no folder had them.
    """

    folders: list[Path]
    manifests: dict[str, dict[str, Any]]  # folder label -> manifest.json (empty dict if missing)
    summary: pd.DataFrame
    samples: pd.DataFrame | None
    sanity: pd.DataFrame | None
    attention: pd.DataFrame | None
    attention_npz: dict[str, Path]  # model label -> stored maps
    models: list[str]  # sorted model labels
    model_folder: dict[str, str]  # model label -> folder label
    has_attention: dict[str, bool]
    classes: list[str] | None
    missing: list[str] = field(default_factory=list)  # honest notes on what is not there
    forced: list[str] = field(default_factory=list)  # incomparable inputs the user forced together

    @property
    def datasets(self) -> list[str]:
        return sorted(set(self.summary["dataset"].astype(str)))


def eps_label(eps: float) -> str:
    """eps on the [0,1] scale as the report shows it: ``"8/255"``, ``"0.5/255"``, ``"unbounded"``."""
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "-"
    if math.isinf(eps):
        return "unbounded"
    v = eps * 255.0
    if abs(v - round(v)) < 1e-4:
        return f"{int(round(v))}/255"
    return f"{v:.3g}/255"


def _folder_labels(folders: list[Path]) -> list[str]:
    """Short unique names for folders: the folder name, with the parent's when names clash."""
    labels = [f.name or str(f) for f in folders]
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            labels[i] = f"{folders[i].parent.name}/{lab}"
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def _read_optional(path: Path, missing: list[str], what: str, label: str) -> pd.DataFrame | None:
    if not path.is_file():
        missing.append(f"{label}: no {path.name} ({what} not shown for this folder)")
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # a damaged optional table must not sink the whole report
        missing.append(f"{label}: {path.name} could not be read ({type(exc).__name__}: {exc})")
        return None


#: columns the report reads from each table (the engine writes all of SUMMARY_/SAMPLE_COLUMNS)
SUMMARY_NEEDS = ("model", "attack", "norm", "eps", "n", "clean_acc", "robust_acc", "attack_success_rate",
                 "mean_norm", "median_norm", "max_norm", "seconds", "status")
SAMPLES_NEEDS = ("model", "attack", "eps", "index", "label", "clean_pred", "norm", "broken")
_TAMPERED = ("the engine never writes this: the folder was edited or damaged; re-run the sweep into a "
             "new folder")
_ACC_TOL = 1e-9


def _require_columns(path: Path, df: pd.DataFrame, need: tuple[str, ...]) -> None:
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise UserError(f"{path} lacks columns {absent}: it was not written by this version of "
                        "robustbench-lta (re-run the sweep into a new folder)")


def cascade_relabel(summary: pd.DataFrame, samples: pd.DataFrame | None) -> bool:
    """Relabel, in place, per-attack cells whose row skipped samples (cascade accounting).

    Such a row's robust accuracy is the cascade's up to that attack, not the attack's own: under the
    attack's name it would read as that attack's strength (a curve, a "strongest attack"). Its
    summary and sample rows become ``<attack> (cascade)``; the worst case, recomputed per sample from
    the same rows, is unchanged. Returns whether any row was relabelled.
    """
    if "skipped" not in summary.columns:
        return False
    hit = (summary["attack"] != WORST_CASE) & (summary["skipped"].fillna(0).astype(int) > 0)
    if not hit.any():
        return False
    keys = summary.loc[hit, ["model", "attack", "eps"]].drop_duplicates()
    summary.loc[hit, "attack"] = summary.loc[hit, "attack"].astype(str) + CASCADE_SUFFIX
    if samples is not None and not samples.empty:
        rows = samples[["model", "attack", "eps"]].assign(_row=np.arange(len(samples)))
        at = rows.merge(keys, on=["model", "attack", "eps"])["_row"].to_numpy()
        col = samples.columns.get_loc("attack")
        samples.iloc[at, col] = samples.iloc[at, col].astype(str) + CASCADE_SUFFIX
    return True


def _fill_added_columns(df: pd.DataFrame, column: str) -> None:
    """A column added to the format later (the cascade's): its default where an older folder lacks it."""
    if column not in df.columns:
        df[column] = COLUMN_DEFAULTS[column]


def _cell(row: Any) -> str:
    return f"{row.model} / {row.attack} at eps {eps_label(float(row.eps))}"


def check_summary(path: Path, summary: pd.DataFrame) -> None:
    """The engine's guarantees on ``summary.parquet``: accuracies in [0, 1], robust <= clean per row.

    A hand-edited or damaged table would otherwise be drawn as if measured (a robust accuracy above
    the clean one is impossible: a sample counts as robust only if it is classified correctly).
    """
    clean = pd.to_numeric(summary["clean_acc"], errors="coerce").to_numpy(float)
    robust = pd.to_numeric(summary["robust_acc"], errors="coerce").to_numpy(float)
    for name, values in (("clean_acc", clean), ("robust_acc", robust)):
        bad = np.flatnonzero(~np.isnan(values) & ((values < -_ACC_TOL) | (values > 1 + _ACC_TOL)))
        if len(bad):
            row = summary.iloc[int(bad[0])]
            raise UserError(f"{path}: {name} {values[bad[0]]:g} of {_cell(row)} lies outside [0, 1]; "
                            f"{_TAMPERED}")
    bad = np.flatnonzero(robust > clean + _ACC_TOL)  # NaN compares False: failed cells pass
    if len(bad):
        row = summary.iloc[int(bad[0])]
        raise UserError(f"{path}: robust_acc {robust[bad[0]]:.4g} above clean_acc {clean[bad[0]]:.4g} for "
                        f"{_cell(row)} ({len(bad)} row(s) like it); {_TAMPERED}")


def _manifest_classes(manifest: dict[str, Any]) -> list[str] | None:
    classes = (manifest.get("dataset") or {}).get("classes") if isinstance(manifest, dict) else None
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def check_samples(path: Path, samples: pd.DataFrame, classes: list[str] | None) -> None:
    """The engine's guarantees on ``samples.parquet``: labels are class indices (within the manifest's
    classes when it names them), and one row per model, attack, budget and sample."""
    if samples.empty:
        return
    labels = pd.to_numeric(samples["label"], errors="coerce").to_numpy(float)
    top = len(classes) if classes else math.inf
    bad = np.flatnonzero(np.isnan(labels) | (labels < 0) | (labels >= top) | (labels != np.round(labels)))
    if len(bad):
        row = samples.iloc[int(bad[0])]
        where = f"the {len(classes)} classes of manifest.json" if classes else "the class indices 0..K-1"
        raise UserError(f"{path}: label {row['label']} of sample {row['index']} ({_cell(row)}) lies outside "
                        f"{where} ({len(bad)} row(s) like it); {_TAMPERED}")
    key = ["model", "attack", "eps", "index"]
    dup = samples.duplicated(key, keep=False).to_numpy()
    if dup.any():
        row = samples.iloc[int(np.flatnonzero(dup)[0])]
        same = int((samples[key] == row[key]).all(axis=1).sum())
        raise UserError(f"{path}: sample {row['index']} has {same} rows for {_cell(row)} (one per sample and "
                        f"budget expected; {int(dup.sum())} rows are duplicates); {_TAMPERED}")


def _safe_name(model: str) -> str:
    return safe_name(model)


def load_results(dirs: list[Path] | list[str], force: bool = False) -> ResultsBundle:
    """Load and merge results folders; raise :class:`UserError` if one is missing or has no summary.

    Folders that evaluated different data or different samples are refused (their numbers do not
    compare) unless ``force``; then the reasons are kept in :attr:`ResultsBundle.forced` and the
    report's first page states them. The same folder given twice is always refused.
    """
    if not dirs:
        raise UserError(
            "no results folder given: pass at least one folder written by `robustbench-lta sweep`"
        )
    folders = [Path(d) for d in dirs]
    seen_dirs: dict[Path, Path] = {}
    for f in folders:
        key = f.resolve()
        if key in seen_dirs:
            raise UserError(
                f"results folder {f} is given twice (as {seen_dirs[key]} too): a model would be compared "
                "with itself; pass each folder once"
            )
        seen_dirs[key] = f
    for f in folders:
        if not f.is_dir():
            raise UserError(
                f"results folder {f} does not exist: pass a folder written by `robustbench-lta sweep`"
            )
        if not (f / "summary.parquet").is_file():
            raise UserError(
                f"{f} has no summary.parquet: it is not a finished sweep (run or resume the sweep first)"
            )
    labels = _folder_labels(folders)
    missing: list[str] = []
    manifests: dict[str, dict[str, Any]] = {}
    per_folder: list[dict[str, Any]] = []
    for folder, label in zip(folders, labels, strict=True):
        try:
            summary = pd.read_parquet(folder / "summary.parquet")
        except Exception as exc:
            raise UserError(f"{folder / 'summary.parquet'} cannot be read ({exc}): re-run the sweep") from exc
        _require_columns(folder / "summary.parquet", summary, SUMMARY_NEEDS)
        _fill_added_columns(summary, "skipped")
        check_summary(folder / "summary.parquet", summary)
        man_path = folder / "manifest.json"
        manifest: dict[str, Any] = {}
        if man_path.is_file():
            try:
                manifest = json.loads(man_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                missing.append(f"{label}: manifest.json could not be read ({exc})")
        else:
            missing.append(f"{label}: no manifest.json (run details unknown)")
        manifests[label] = manifest
        samples = _read_optional(
            folder / "samples.parquet",
            missing,
            "confidence intervals from paired samples and per-class accuracy",
            label,
        )
        if samples is not None:
            _require_columns(folder / "samples.parquet", samples, SAMPLES_NEEDS)
            _fill_added_columns(samples, "skipped_by")
            check_samples(folder / "samples.parquet", samples, _manifest_classes(manifest))
        per_folder.append(
            {
                "label": label,
                "folder": folder,
                "summary": summary,
                "manifest": manifest,
                "samples": samples,
                "sanity": _read_optional(folder / "sanity.parquet", missing, "sanity checks", label),
                "attention": (
                    _read_optional(folder / "attention.parquet", missing, "attention drift", label)
                    if (folder / "attention.parquet").is_file()
                    else None
                ),
            }
        )
    from .protocol import comparability_problems

    problems = comparability_problems(per_folder)
    if problems and not force:
        raise UserError(
            f"results not comparable: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
            + "; report them separately, or pass --force to compare anyway (page 1 then says so)"
        )
    # model labels that occur in more than one folder get the folder name appended
    count: dict[str, int] = {}
    for pf in per_folder:
        for m in sorted(set(pf["summary"]["model"].astype(str))):
            count[m] = count.get(m, 0) + 1
    model_folder: dict[str, str] = {}
    has_attention: dict[str, bool] = {}
    npz: dict[str, Path] = {}
    frames: dict[str, list[pd.DataFrame]] = {"summary": [], "samples": [], "sanity": [], "attention": []}
    for pf in per_folder:
        label = pf["label"]
        originals = sorted(set(pf["summary"]["model"].astype(str)))
        rename = {m: (f"{m} [{label}]" if count[m] > 1 else m) for m in originals}
        man_models = pf["manifest"].get("models", {}) or {}
        for orig, new in rename.items():
            model_folder[new] = label
            info = man_models.get(orig, {}) if isinstance(man_models, dict) else {}
            path = pf["folder"] / "attention" / f"{_safe_name(orig)}.npz"
            att = bool(info.get("has_attention", False)) or path.is_file()
            if pf["attention"] is not None and orig in set(pf["attention"]["model"].astype(str)):
                att = True
            has_attention[new] = att
            if path.is_file():
                npz[new] = path
            elif att:
                missing.append(f"{label}: attention model {orig} has no stored maps (attention/{path.name})")
        for key in frames:
            df = pf[key]
            if df is None or df.empty and key != "summary":
                continue
            df = df.copy()
            if "model" in df.columns:
                df["model"] = df["model"].astype(str).map(lambda m, r=rename: r.get(m, m))
            df["folder"] = label
            frames[key].append(df)
    summary = pd.concat(frames["summary"], ignore_index=True)
    summary["eps"] = summary["eps"].astype(float)
    for col in ("message",):
        if col not in summary.columns:
            summary[col] = ""
    summary["message"] = summary["message"].fillna("").astype(str)
    summary["status"] = summary["status"].fillna("failed").astype(str)
    if "dataset" not in summary.columns:
        summary["dataset"] = "unknown"

    def cat(key: str) -> pd.DataFrame | None:
        return pd.concat(frames[key], ignore_index=True) if frames[key] else None

    samples_all = cat("samples")
    if cascade_relabel(summary, samples_all):
        missing.append("cascade accounting: rows where an attack skipped samples earlier attacks had broken "
                       f"are shown as '<attack>{CASCADE_SUFFIX}' (the cascade's figure up to that attack), "
                       "apart from the attack's own complete rows")

    models = sorted(set(summary["model"].astype(str)))
    classes = None
    for man in manifests.values():
        cl = (man.get("dataset") or {}).get("classes")
        if cl:
            classes = [str(c) for c in cl]
            break
    if summary.empty:
        missing.append("the summary table is empty: no cell finished")
    return ResultsBundle(
        folders=folders,
        manifests=manifests,
        summary=summary,
        samples=samples_all,
        sanity=cat("sanity"),
        attention=cat("attention"),
        attention_npz=npz,
        models=models,
        model_folder=model_folder,
        has_attention=has_attention,
        classes=classes,
        missing=missing,
        forced=problems,
    )


def model_palette(models: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per model, keyed by sorted model names, used on every page of the report."""
    import seaborn as sns

    names = sorted(models)
    colours = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(len(names), 1))
    return {m: tuple(colours[i]) for i, m in enumerate(names)}


def wilson(k: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (statsmodels; see stats.py)."""
    from .stats import wilson as _wilson

    return _wilson(k, n)


def norm_attacks(summary: pd.DataFrame, norm: str) -> list[str]:
    """Attacks (not the worst-case rows) of one norm with at least one ok cell."""
    ok = summary[(summary["status"] == "ok") & (summary["attack"] != WORST_CASE) & (summary["norm"] == norm)]
    return sorted(set(ok["attack"].astype(str)))


def eps_grid(summary: pd.DataFrame, norm: str) -> list[float]:
    """Finite eps values of one norm's bounded cells, ascending, de-duplicated within tolerance."""
    sub = summary[(summary["norm"] == norm) & np.isfinite(summary["eps"].astype(float))]
    vals = sorted(set(float(e) for e in sub["eps"]))
    out: list[float] = []
    for v in vals:
        if not out or abs(v - out[-1]) > EPS_TOL:
            out.append(v)
    return out


def worst_case_per_sample(
    summary: pd.DataFrame, samples: pd.DataFrame, model: str, norm: str, grid: list[float]
) -> pd.DataFrame | None:
    """Per sample, robust (correct clean and unbroken by every attack of ``norm``) at each eps of ``grid``.

    The same definition as the engine's worst-case rows: a sample counts as broken at eps if any
    ok attack of that norm broke it at a budget eps' <= eps, or a minimal-perturbation (unbounded)
    attack of that norm found an adversarial example of norm <= eps. Returns a frame indexed by
    dataset ``index`` with columns ``label`` and one bool column per eps; ``None`` without samples.
    """
    ok = summary[
        (summary["status"] == "ok")
        & (summary["attack"] != WORST_CASE)
        & (summary["model"] == model)
        & (summary["norm"] == norm)
    ]
    attacks = sorted(set(ok["attack"].astype(str)))
    if not attacks:
        return None
    s = samples[(samples["model"] == model) & samples["attack"].isin(attacks)]
    if s.empty:
        return None
    # only the cells that finished ok count (a failed cell's partial samples would bias the min)
    ok_cells = {(str(a), float(e)) for a, e in zip(ok["attack"], ok["eps"], strict=True)}
    keep = np.array(
        [(str(a), float(e)) in ok_cells for a, e in zip(s["attack"], s["eps"], strict=True)], dtype=bool
    )
    s = s[keep]
    if s.empty:
        return None
    index, label, clean_pred, broken_at = broken_at_eps(s)  # the one worst-case rule (results.py)
    correct = clean_pred == label
    out = pd.DataFrame({"label": label}, index=index)
    for e in grid:
        out[e] = correct & ~(broken_at <= e + EPS_TOL)
    return out


def headline_eps(grid: list[float], norm: str) -> float | None:
    """The eps the verdict and per-class figure lead with: linf: largest in (0, 8/255]; else largest > 0."""
    pos = [e for e in grid if e > EPS_TOL]
    if not pos:
        return grid[-1] if grid else None
    if norm == "linf":
        small = [e for e in pos if e <= 8 / 255 + EPS_TOL]
        if small:
            return small[-1]
    return pos[-1]
