"""The HTML report: one self-contained folder that opens from disk (file://), no server, no network.

    DIR/index.html   verdict, sortable table (every model x attack x budget, 95% intervals),
                     robustness curves (inline SVG, values on hover), the explorer's frame
    DIR/data.js      the explorer's records (loaded by a <script> tag: fetch() is refused on file://)
    DIR/report.js    sorting, filtering, the explorer (plain JavaScript, no library)
    DIR/report.css   styles (system fonts only)
    DIR/img/*.png    explorer pictures, named by content

It reads only the results folders (:func:`~.load.load_results`), and its verdict is the PDF's
(:func:`~.verdict.compute_verdict`, same text). The folder is built under a temporary name beside
``DIR`` and swapped in at the end: a failed build leaves the previous report as it was, and only a
folder this report wrote (it holds :data:`HTML_MARK`) is ever replaced.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils import apply_umask, swap_in_folder
from .html_explorer import build_explorer
from .html_tables import curves_html, hex_colour, table_html, table_rows
from .load import ResultsBundle, eps_label, load_results, model_palette
from .verdict import compute_verdict

#: a file in every folder this report writes: only such a folder (or an empty one) is replaced
HTML_MARK = ".robustbench-lta-html-report"
STATIC_FILES = ("report.js", "report.css")


@dataclass
class HtmlReportResult:
    """What :func:`build_html_report` wrote."""

    folder: Path
    index: Path
    records: int = 0
    images: int = 0
    notes: list[str] = field(default_factory=list)


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _models_list(bundle: ResultsBundle, palette: dict[str, str]) -> str:
    items = []
    for m in bundle.models:
        kind = "attention model" if bundle.has_attention.get(m) else "no attention"
        items.append(f'<li><span class="swatch" style="background:{palette[m]}"></span>{escape(m)} '
                     f'({kind}; folder {escape(bundle.model_folder.get(m, "?"))})</li>')
    return f"<ul>{''.join(items)}</ul>"


def _page(bundle: ResultsBundle, title: str, verdict: dict[str, Any], palette: dict[str, str],
          explorer_budget: str, notes: list[str]) -> str:
    missing = "".join(f"<li>{escape(n)}</li>" for n in notes)
    generated = f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    folders = ", ".join(escape(str(f)) for f in bundle.folders)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="stylesheet" href="report.css">
</head><body>
<header><h1>{escape(title)}</h1>
<p class="sub">Generated {generated} by robustbench-lta from {folders}.
Opens from disk; no network needed.</p>
<nav><a href="#verdict">Verdict</a> <a href="#table">Table</a> <a href="#curves">Curves</a>
<a href="#explorer-section">Explorer</a></nav></header>
<section id="verdict"><h2>Verdict</h2>{_paragraphs(verdict.get("text", ""))}
<h3>Models</h3>{_models_list(bundle, palette)}
{f'<h3>What is missing or incomplete</h3><ul class="notes">{missing}</ul>' if missing else ''}</section>
<section id="table"><h2>Every model x attack x budget</h2>
<p class="note">Click a heading to sort (again: reverse). Robust accuracy: correct clean and not broken;
95% CI: Wilson score interval (n = samples). Hover a row whose status is not ok for the engine's
message. The address can sort too: <code>index.html#sort=robust_acc</code>
(<code>-robust_acc</code>: descending).</p>{table_html(table_rows(bundle))}</section>
<section id="curves"><h2>Robustness curves</h2>{curves_html(bundle, palette)}</section>
<section id="explorer-section"><h2>Per-sample explorer</h2>
<p class="note">{escape(explorer_budget)} Perturbation images show adversarial minus clean, amplified by the
stated factor around mid-grey (grey = no change). Attention maps are overlaid on the grey image in one
colour scale per model and level (0 to its 99.5th percentile over the stored maps), shared by clean and
adversarial maps. Filters can be set in the address too, e.g. <code>index.html#model=NAME&amp;broken=1</code>
(add <code>&amp;view=explorer</code> to show the explorer alone).</p>
<div id="filters"></div>
<p id="explorer-count" class="note"></p>
<div id="explorer"></div>
<p><button id="more" type="button" hidden>show more</button></p></section>
<div id="js-errors" hidden></div>
<script src="data.js"></script>
<script src="report.js"></script>
</body></html>
"""


def _written_by_us(folder: Path) -> bool:
    return (folder / HTML_MARK).is_file() or not any(folder.iterdir())


def check_html_out(out_dir: Path) -> None:
    """Refuse, before any work, an output the report would have to delete someone's files for."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"--html {out_dir} is a file: give a folder for the HTML report")
    if out_dir.is_dir() and not _written_by_us(out_dir):
        raise UserError(f"--html {out_dir} holds files the report did not write: the report replaces that "
                        "folder as a whole; give a new or empty folder")


def render_html(bundle: ResultsBundle, folder: Path, title: str | None = None) -> HtmlReportResult:
    """Write the report's files into ``folder`` (which exists and is empty or ours)."""
    palette = {m: hex_colour(c) for m, c in model_palette(bundle.models).items()}
    verdict = compute_verdict(bundle)
    explorer = build_explorer(bundle, folder / "img")
    notes = list(bundle.missing) + explorer.notes
    doc_title = title or ("Robustness report: " + " vs ".join(bundle.models) if bundle.models
                          else "Robustness report (no finished results)")
    (folder / "index.html").write_text(_page(bundle, doc_title, verdict, palette, explorer.budget, notes),
                                       encoding="utf-8")
    payload = {"models": bundle.models, "palette": palette,
               "attention": {m: bool(bundle.has_attention.get(m)) for m in bundle.models},
               "classes": bundle.classes or [], "eps_order": _eps_order(bundle),
               "map_scales": explorer.map_scales, "records": explorer.records}
    # "</" could end the script element if a label held it; JSON allows the escaped form
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    (folder / "data.js").write_text(f"window.RB_REPORT = {text};\n", encoding="utf-8")
    static = resources.files(__package__).joinpath("html_static")
    for name in STATIC_FILES:
        (folder / name).write_text(static.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / HTML_MARK).write_text("written by robustbench-lta report --html; replaced on the next run\n")
    return HtmlReportResult(folder=folder, index=folder / "index.html", records=len(explorer.records),
                            images=explorer.images, notes=notes)


def _eps_order(bundle: ResultsBundle) -> list[str]:
    """Budget labels in ascending order (unbounded last): the explorer's budget menu."""
    values = sorted(set(bundle.summary["eps"].astype(float)))
    out: list[str] = []
    for v in values:
        if eps_label(v) not in out:
            out.append(eps_label(v))
    return out


def build_html_report(results_dirs: list[Path], out_dir: Path, title: str | None = None, *,
                      force: bool = False) -> HtmlReportResult:
    """Write the HTML report of ``results_dirs`` into the folder ``out_dir`` (replacing an earlier one).

    Raises :class:`UserError` as :func:`~.load.load_results` does, and when ``out_dir`` is a file or a
    folder of other files.
    """
    out_dir = Path(out_dir)
    check_html_out(out_dir)
    bundle = load_results([Path(d) for d in results_dirs], force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        apply_umask(staged, 0o777)  # mkdtemp makes 0700: a report is shared like any file
        result = render_html(bundle, staged, title)
        swap_in_folder(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result.folder, result.index = out_dir, out_dir / "index.html"
    return result


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (what copying it moves)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


__all__ = ["HtmlReportResult", "build_html_report", "check_html_out", "folder_size", "render_html"]
