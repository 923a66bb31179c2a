"""Build the comparison report (PDF + PNG figures + CSV/Markdown tables) from results folders.

Sections, each starting on its own page: Summary (what was compared, the verdict), Robustness
curves, Tables, Attention under attack, Sanity checks, Per-class robust accuracy. Missing pieces
(failed cells, no samples, no attention model, one model only) are said in words on the page where
they would have appeared and collected in :attr:`ReportResult.warnings`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import UserError
from ..results import STATUSES_NOT_OK, not_applicable_lines
from ..utils import apply_umask, swap_in_folder
from .attention_drift import drift_table
from .curves import curves_table, robustness_curve_pages
from .family import family_section
from .load import ResultsBundle, eps_label, load_results, model_palette
from .pages import PageSink, report_style
from .per_class import per_class_page, per_class_views
from .protocol import model_cards, strong_attack_config
from .published import published_section
from .sections import SECTIONS, _title, attention_section, sanity_section, table_section
from .summary import summary_lead, summary_text
from .tables import all_tables, sanity_table, write_table
from .threat import budget_warnings
from .verdict import compute_verdict

CURVE_KINDS = ("robust", "conditional", "both")


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the PDF, figure PNGs, table files, section titles and warnings."""

    pdf: Path
    pngs: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)
    family_intervals: pd.DataFrame | None = None  # the seed-family page's table (None without families)
    pages: int = 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("robustbench-lta")
    except Exception:  # not installed (running from a source tree)
        return "(version unknown)"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def build_report(
    results_dirs: list[Path],
    out_pdf: Path,
    title: str | None = None,
    *,
    force: bool = False,
    curves: str = "both",
) -> ReportResult:
    """Write the PDF report for ``results_dirs`` to ``out_pdf`` plus ``<stem>_files/`` (PNGs, CSV, Markdown).

    Raises :class:`UserError` if a folder is missing or is not a finished sweep (no summary.parquet),
    or if the folders evaluated different data or samples (unless ``force``: page 1 then says so).
    ``curves``: ``robust`` (robust accuracy), ``conditional`` (robust accuracy among clean-correct
    images) or ``both``.
    """
    if curves not in CURVE_KINDS:
        raise UserError(f"curves must be one of {', '.join(CURVE_KINDS)}, not {curves!r}")
    bundle = load_results([Path(d) for d in results_dirs], force=force)
    out_pdf = Path(out_pdf)
    if out_pdf.suffix.lower() != ".pdf":
        raise UserError(f"report output {out_pdf} must end in .pdf")
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    final_files = out_pdf.parent / f"{out_pdf.stem}_files"
    _check_outputs(out_pdf, final_files)
    # Everything is written beside the final names first and swapped in at the end, so a report
    # that fails halfway leaves the previous PDF and its files as they were. The staging names are
    # unique (mkdtemp/mkstemp): a file the user keeps under some fixed name is never touched.
    files = Path(tempfile.mkdtemp(dir=out_pdf.parent, prefix=f".{out_pdf.stem}_files.", suffix=".tmp"))
    fd, tmp_name = tempfile.mkstemp(dir=out_pdf.parent, prefix=f".{out_pdf.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        apply_umask(files, 0o777)  # mkdtemp/mkstemp make 0700/0600; a report is shared like any file
        (files / REPORT_MARK).write_text("written by robustbench-lta report; replaced on the next run\n")
        result = _render(bundle, out_pdf, tmp, files, title, curves)
        apply_umask(tmp)
        # no stale figure from an earlier report with other sections: the old folder goes as a whole
        swap_in_folder(files, final_files, then=lambda: os.replace(tmp, out_pdf))
    except BaseException:
        shutil.rmtree(files, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        raise
    result.pngs = [final_files / p.name for p in result.pngs]
    result.tables = [final_files / p.name for p in result.tables]
    return result


#: a file in every ``NAME_files`` folder a report writes: only such a folder is ever replaced
REPORT_MARK = ".robustbench-lta-report"
#: what reports wrote into ``NAME_files`` before the mark (such a folder with a verdict.json is ours)
_REPORT_SUFFIXES = (".png", ".csv", ".md", ".json", ".yaml")


def _written_by_report(folder: Path) -> bool:
    """Whether ``folder`` is a report's files folder (or empty): replacing it loses nothing of the user's."""
    if (folder / REPORT_MARK).is_file():
        return True
    entries = list(folder.iterdir())
    legacy = (folder / "verdict.json").is_file()
    return not entries or legacy and all(
        p.is_file() and not p.is_symlink() and p.suffix in _REPORT_SUFFIXES for p in entries)


def _check_outputs(out_pdf: Path, final_files: Path) -> None:
    """Refuse, before rendering, outputs the report would have to move or delete something else for."""
    if out_pdf.is_dir():
        raise UserError(f"--out {out_pdf} is a folder: give the path of the PDF to write, e.g. "
                        f"{out_pdf / 'report.pdf'}")
    if final_files.is_symlink() or (final_files.exists() and not final_files.is_dir()):
        raise UserError(f"{final_files} is in the way: the report writes its figures and tables into a "
                        f"folder of that name beside {out_pdf.name}; move or rename that file, or choose "
                        "another --out")
    if final_files.is_dir() and not _written_by_report(final_files):
        raise UserError(f"{final_files} holds files the report did not write: the report replaces that "
                        "folder with its figures and tables; move them elsewhere, or choose another --out")


def _strong_commands(bundle: ResultsBundle, out_pdf: Path, files: Path) -> dict[str, str]:
    """Per folder without a strong attack: a sweep config adding AutoAttack, and the command to run it.

    The YAML lands in the report's files folder; running it resumes the same results folder, so only
    the new attack runs and the worst case is recomputed over all attacks.
    """
    verdict = compute_verdict(bundle)
    commands: dict[str, str] = {}
    folder_of = dict(zip(bundle.manifests, bundle.folders, strict=True))  # label -> path, same order
    for w in verdict["weak"]:
        if w["norm"] != "linf":
            continue
        for label in sorted({bundle.model_folder.get(m, "") for m in w["models"]}):
            folder = folder_of.get(label)
            cfg = strong_attack_config(bundle.manifests.get(label, {}), folder, w["eps"]) if folder else None
            if cfg is None:
                continue
            name = f"add_autoattack_{''.join(c if c.isalnum() else '_' for c in label)}.yaml"
            (files / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
            commands[label] = f"robustbench-lta sweep {out_pdf.parent / f'{out_pdf.stem}_files' / name}"
    return commands


def _render(
    bundle: ResultsBundle, out_pdf: Path, tmp: Path, files: Path, title: str | None, curves: str = "both"
) -> ReportResult:
    """Write the PDF to ``tmp`` and the PNG/CSV/Markdown files into ``files`` (both swapped in later)."""
    from matplotlib.backends.backend_pdf import PdfPages

    warnings = list(bundle.missing)
    palette = model_palette(bundle.models)
    verdict = compute_verdict(bundle, _strong_commands(bundle, out_pdf, files))
    result = ReportResult(pdf=out_pdf, verdict=verdict)
    if len(bundle.models) < 2:
        warnings.append(
            f"only one model ({bundle.models[0]}): nothing to compare against"
            if bundle.models
            else "no model has results: nothing to compare"
        )
    doc_title = title or ("Robustness report: " + " vs ".join(bundle.models))
    if not bundle.models and not title:
        doc_title = "Robustness report (no finished results)"
    if len(doc_title) > 75 and not title:
        runs = f" from {len(bundle.folders)} runs" if len(bundle.folders) > 1 else ""
        doc_title = f"Robustness report: {len(bundle.models)} models{runs}"
    with report_style(), PdfPages(tmp) as pdf:
        sink = PageSink(pdf=pdf, png_dir=files)
        info = pdf.infodict()
        info["Title"] = doc_title
        info["Creator"] = "robustbench-lta"

        def section(i: int) -> None:
            result.sections.append(SECTIONS[i])

        # 1. Summary: derived data first, so the summary's list of what is missing is complete
        pre = _precompute(bundle, warnings)
        threat_notes = (budget_warnings(model_cards(bundle.manifests, bundle.model_folder), bundle.summary)
                        + not_applicable_lines(bundle.summary))
        section(0)
        sink.summary_page(
            f"{_title(0)}: {doc_title}",
            summary_lead(verdict),
            summary_text(bundle, verdict, warnings, threat_notes),
            subtitle=f"Generated {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by robustbench-lta "
            f"{_version()} from {', '.join(str(f) for f in bundle.folders)}",
        )

        # 2. Robustness curves
        section(1)
        figs = robustness_curve_pages(bundle, palette, _title(1), kind=curves)
        if figs:
            for k, fig in enumerate(figs):
                sink.add(fig, f"robustness_curves_{k + 1}")
        else:
            sink.text_pages(
                _title(1),
                "No bounded attack has results, so there are no curves. Unbounded "
                "attacks are summarised in the Tables section.",
            )

        # only when labels are NAME@seedS
        result.family_intervals = family_section(sink, bundle, palette, "Seed families")

        # 3. Tables
        section(2)
        for name, (num, _txt, _caption) in pre["tables"].items():
            result.tables += write_table(num, files, name)
        result.tables += write_table(pre["auc"], files, "curve_auc")
        table_section(sink, pre, bundle, f"{out_pdf.stem}_files")
        result.tables += published_section(sink, bundle, files)  # zoo models: published vs measured

        # 4. Attention under attack
        section(3)
        attention_section(sink, bundle, palette, pre, result)

        # 5. Sanity checks
        section(4)
        san = sanity_table(bundle)
        result.tables += write_table(san, files, "sanity_checks")
        sanity_section(sink, san)

        # 6. Per-class robust accuracy
        section(5)
        pc = pre["per_class"]
        if not pc:
            why = (
                "samples.parquet is missing"
                if bundle.samples is None
                else "no bounded attack finished with per-sample records"
            )
            sink.text_pages(_title(5), f"Per-class robust accuracy needs per-sample results: {why}.")
        else:
            parts = []
            for table, pinfo in pc:
                out = (100 * table).round(3)
                out.insert(0, "model", out.index)
                out.insert(1, "attack", pinfo["attack"])
                out.insert(2, "eps", eps_label(pinfo["eps"]))
                parts.append(out.reset_index(drop=True))
            result.tables += write_table(
                pd.concat(parts, ignore_index=True), files, "per_class_robust_accuracy"
            )
            sink.add(per_class_page(pc, _title(5)), "per_class_robust_accuracy")
        result.pages = sink.pages
        result.pngs = list(sink.pngs)
    (files / "verdict.json").write_text(
        json.dumps({k: v for k, v in verdict.items()}, indent=1, default=_json_default)
    )
    # page 1 shows the threat notes under READ FIRST (not as missing pieces); callers get them here too
    result.warnings = warnings + result.warnings + threat_notes  # the attention section adds its own
    return result


def _precompute(bundle: ResultsBundle, warnings: list[str]) -> dict[str, Any]:
    """Tables and derived data, computed before the Summary so its 'missing' list is complete."""
    pre: dict[str, Any] = {"tables": all_tables(bundle), "auc": curves_table(bundle)}
    s = bundle.summary
    bad = s[s["status"].isin(STATUSES_NOT_OK)]
    if len(bad) <= 6:
        for r in bad.itertuples(index=False):
            warnings.append(
                f"cell {r.model} / {r.attack} / eps {eps_label(r.eps)} is {r.status}: "
                f"{r.message or 'no message'}"
            )
    else:  # many: one line per distinct reason, the cells are listed in the Tables section
        for (status, message), g in bad.groupby(["status", "message"], sort=True):
            warnings.append(
                f"{len(g)} cells {status} ({', '.join(sorted(set(g['model'].astype(str))))}): "
                f"{message or 'no message'} (listed under 'cells not ok' in Tables)"
            )
    finite = s[np.isfinite(s["eps"].astype(float))]
    if not finite.empty and len(set(finite["eps"])) == 1:
        warnings.append(
            f"a single eps ({eps_label(float(finite['eps'].iloc[0]))}) was swept: curves are points"
        )
    pre["per_class"] = per_class_views(bundle)
    if bundle.samples is None:
        warnings.append("no samples.parquet: intervals use Newcombe/Wilson (unpaired), no per-class view")
    if bundle.sanity is None:
        warnings.append("no sanity.parquet: sanity checks cannot be shown")
    att_models = [m for m in bundle.models if bundle.has_attention.get(m)]
    if not att_models:
        warnings.append("no attention model among the results: the attention section is a note only")
    pre["att_models"] = att_models
    pre["drift"] = (
        drift_table(bundle.attention) if bundle.attention is not None and not bundle.attention.empty else None
    )
    if att_models and pre["drift"] is None:
        warnings.append("attention models present but attention.parquet is missing or empty: no drift plot")
    return pre
