"""The report's table, attention and sanity-check sections (pages built from prepared data)."""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np
import pandas as pd

from .attention_drift import drift_page
from .attention_figures import figure_choice, map_grid_page
from .load import WORST_CASE, ResultsBundle
from .pages import PageSink
from .tables import OFF_PAPER, SANITY_EXPLAIN, STATUS_COLOURS, write_table

SECTIONS = [
    "Summary",
    "Robustness curves",
    "Tables",
    "Attention under attack",
    "Sanity checks",
    "Per-class robust accuracy",
]


def _title(i: int) -> str:
    return f"{i + 1}. {SECTIONS[i]}"


def pct_text(v: float) -> str:
    """A percentage as every table on paper prints it: one decimal (the CSV keeps full precision)."""
    return "" if not np.isfinite(v) else f"{v:.1f}"


def table_section(
    sink: PageSink, pre: dict[str, Any], bundle: ResultsBundle, files: str = "the files folder"
) -> None:
    """The tables on paper, packed onto as few pages as fit; FAILED/INVALID cells in red, worst-case rows
    shaded. The tables in :data:`~.tables.OFF_PAPER` are only named, with their files (in ``files``,
    the folder beside the PDF)."""
    empty_note = {
        "unbounded_attacks": "No unbounded (minimal-perturbation) attack in these results.",
        "cells_not_ok": "Every cell finished ok.",
    }
    items: list[tuple[str, pd.DataFrame, pd.DataFrame | None]] = []
    for name, (num, txt, caption) in pre["tables"].items():
        if name in OFF_PAPER:
            continue
        shown = (txt if txt is not None else num).copy()
        if shown.empty:
            items.append((f"{caption} {empty_note.get(name, 'No rows.')}", shown, None))
            continue
        for c in shown.columns:
            if shown[c].dtype.kind == "f":  # percentages: one decimal everywhere; other numbers 4 digits
                shown[c] = shown[c].map(pct_text if str(c).endswith("%") else
                                        lambda v: "" if not np.isfinite(v) else f"{v:.4g}")
        shown = shown.astype(str)
        colours = pd.DataFrame("white", index=shown.index, columns=shown.columns)
        colours = colours.where(~shown.isin(["FAILED", "INVALID", "failed", "invalid"]), "#ffcdd2")
        if "attack" in shown.columns:  # the worst-case rows stand out as the headline numbers
            colours.loc[shown["attack"] == WORST_CASE, [c for c in ("attack", "model") if c in shown]] = (
                "#e8eaf6"
            )
        items.append((caption, shown, colours))
    off = "; ".join(f"{what} ({name}.csv)" for name, what in OFF_PAPER.items())
    sink.table_stack(
        _title(2),
        items,
        wrap={"message": 90},
        note=f"Numbers in % with one decimal, eps in /255. Every table is also written as CSV (full "
        f"precision, 95% intervals) and Markdown into {files}/ beside the PDF. Only there: {off}.",
    )


def attention_section(
    sink: PageSink, bundle: ResultsBundle, palette: dict[str, Any], pre: dict[str, Any], result: Any
) -> None:
    att_models = pre["att_models"]
    if not att_models:
        sink.text_pages(
            _title(3),
            "No attention models in these results: none of the compared models has an attention "
            "mechanism, so there are no attention maps or drift measurements to show.\n\nModels: "
            + ", ".join(bundle.models),
        )
        return
    first = True
    for m in att_models:
        path = bundle.attention_npz.get(m)
        if path is None:
            continue
        try:
            title = _title(3) if first else f"{_title(3)} (continued): maps of {m}"
            manifest = bundle.manifests.get(bundle.model_folder.get(m, ""), {})
            fig = map_grid_page(m, path, bundle.classes, title, figure_choice(manifest))
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            result.warnings.append(f"attention maps of {m} could not be drawn: {exc}")
            continue
        sink.add(fig, f"attention_maps_{''.join(c if c.isalnum() else '_' for c in m)}")
        first = False
    drift = pre["drift"]
    if drift is not None and not drift.empty:
        result.tables += write_table(drift, sink.png_dir, "attention_drift")
        sink.add(
            drift_page(drift, palette, _title(3) if first else f"{_title(3)} (continued): drift"),
            "attention_drift",
        )
        first = False
    if first:
        sink.text_pages(
            _title(3),
            "Attention models (" + ", ".join(att_models) + ") are present, but the "
            "results hold neither stored maps (attention/MODEL.npz) nor attention.parquet. Re-run "
            "the sweep with attention_samples > 0 to get them.",
        )


def sanity_section(sink: PageSink, san: pd.DataFrame) -> None:
    if san.empty:
        sink.text_pages(
            _title(4),
            "No sanity checks in these results (sanity.parquet missing or empty), so "
            "gradient masking and evaluation bugs were not screened for. Treat the numbers with care.",
        )
        return
    counts = san["status"].value_counts()
    head = (
        f"{len(san)} checks: {counts.get('pass', 0)} pass, {counts.get('warn', 0)} warn, "
        f"{counts.get('fail', 0)} fail. A warning or failure does not prove the numbers wrong, but each "
        "points at a way robustness can be overestimated; read the row's message for the specifics."
    )
    rows = []
    for check in sorted(
        set(san["check"]), key=lambda c: (-(san[san["check"] == c]["status"] != "pass").sum(), c)
    ):
        c = san[san["check"] == check]["status"].value_counts()
        rows.append(
            {
                "check": check,
                "pass": int(c.get("pass", 0)),
                "warn": int(c.get("warn", 0)),
                "fail": int(c.get("fail", 0)),
                "what a warning or failure means": SANITY_EXPLAIN.get(check, "see the rows' messages."),
            }
        )
    overview = pd.DataFrame(rows).astype(str)
    ov_colours = pd.DataFrame("white", index=overview.index, columns=overview.columns)
    for col in ("warn", "fail"):
        ov_colours.loc[overview[col] != "0", col] = STATUS_COLOURS[col]
    bad = san[san["status"] != "pass"].reset_index(drop=True)
    colours = pd.DataFrame("white", index=bad.index, columns=bad.columns)
    colours["status"] = bad["status"].map(STATUS_COLOURS).fillna("white")
    items = [("Checks: passes counted, warnings and failures listed below", overview, ov_colours)]
    if bad.empty:
        items.append(("Every check passed: no warning or failure to list.", bad, None))
    else:
        items.append((f"Warnings and failures in full ({len(bad)} rows; fail first)", bad, colours))
    sink.table_stack(
        _title(4),
        items,
        note=head + " Passing rows are only counted here; all rows are in sanity_checks.csv.",
        wrap={"what a warning or failure means": 85, "message": 80, "attack": 22},
        fontsize=8,
        budget=40.0,  # one page unless there are many warnings
    )
