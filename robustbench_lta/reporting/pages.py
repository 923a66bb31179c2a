"""Page plumbing shared by the report sections: style, titled pages, wrapped text, table pages.

Every page is a landscape A4 matplotlib figure. Sections hand their figures to a :class:`PageSink`,
which appends them to the PDF and saves figure pages as PNG beside it. Styling is applied through
context managers only, so building a report changes no global matplotlib state.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PAGE = (11.69, 8.27)  # landscape A4, inches
PNG_DPI = 130
#: page 1's body font sizes, tried in turn until the body fits on the page (then it continues)
BODY_FONTS = (9.5, 9.0, 8.5, 8.0, 7.5)
MIN_BODY_FONT = BODY_FONTS[-1]
RC = {
    "pdf.fonttype": 42,  # TrueType: the text stays extractable and searchable
    "ps.fonttype": 42,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.titlesize": 16,
    "figure.titleweight": "bold",
}


@contextlib.contextmanager
def report_style() -> Iterator[None]:
    """Seaborn 'whitegrid' look and readable font sizes, restored on exit."""
    import seaborn as sns

    with matplotlib.rc_context(), sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        matplotlib.rcParams.update(RC)
        yield


def new_page(title: str | None = None, subtitle: str | None = None) -> Figure:
    """A blank landscape page with a bold title at the top (the title text is searchable in the PDF)."""
    fig = plt.figure(figsize=PAGE)
    if title:
        # about 72 bold characters fit across the page at 17 pt: shrink longer titles, never clip them
        size = 17.0 if len(title) <= 72 else max(11.0, 17.0 * 72 / len(title))
        fig.text(0.04, 0.955, title, fontsize=size, fontweight="bold", va="top", ha="left")
    if subtitle:
        fig.text(
            0.04,
            0.915,
            "\n".join(textwrap.wrap(subtitle, 140)),
            fontsize=10,
            color="0.3",
            va="top",
            ha="left",
        )
    return fig


def wrap_lines(text: str, width: int = 125) -> list[str]:
    """Wrap paragraphs (separated by blank lines) into lines, keeping blank lines between paragraphs."""
    lines: list[str] = []
    for para in text.split("\n"):
        if not para.strip():
            lines.append("")
            continue
        indent = len(para) - len(para.lstrip())
        lines.extend(
            textwrap.wrap(
                para.strip(),
                width=width - indent,
                initial_indent=" " * indent,
                subsequent_indent=" " * (indent + 2),
            )
            or [""]
        )
    return lines


def auto_widths(df: pd.DataFrame) -> list[float]:
    """Column widths (fractions of the table width) from the longest line in each column and its header."""
    raw = _chars(df)
    total = float(sum(raw))
    return [r / total for r in raw]


@dataclass
class PageSink:
    """Collects pages into the PDF; figure pages are also written as PNG into ``png_dir``."""

    pdf: PdfPages
    png_dir: Path
    pngs: list[Path] = field(default_factory=list)
    pages: int = 0

    def add(self, fig: Figure, png_name: str | None = None) -> None:
        self.pdf.savefig(fig)
        if png_name:
            path = self.png_dir / f"{png_name}.png"
            fig.savefig(path, dpi=PNG_DPI)
            self.pngs.append(path)
        plt.close(fig)
        self.pages += 1

    def text_pages(
        self,
        title: str,
        text: str,
        *,
        subtitle: str | None = None,
        width: int = 125,
        fontsize: float = 10.5,
        mono: bool = False,
        png_name: str | None = None,
    ) -> None:
        """Wrapped text over as many pages as it needs (continued pages keep the title)."""
        lines = wrap_lines(text, width)
        per_page = int(0.82 * PAGE[1] * 72 / (fontsize * 1.45))
        chunks = [lines[i : i + per_page] for i in range(0, max(len(lines), 1), per_page)] or [[]]
        for k, chunk in enumerate(chunks):
            fig = new_page(title if k == 0 else f"{title} (continued)", subtitle if k == 0 else None)
            fig.text(
                0.04,
                0.87,
                "\n".join(chunk),
                fontsize=fontsize,
                va="top",
                ha="left",
                family="monospace" if mono else None,
                linespacing=1.45,
            )
            self.add(fig, f"{png_name}_{k + 1}" if png_name and len(chunks) > 1 else png_name)

    def summary_page(
        self,
        title: str,
        lead: str,
        text: str,
        *,
        subtitle: str | None = None,
        png_name: str | None = None,
    ) -> None:
        """Page 1: ``lead`` (the bottom line, then n) large in a box at the top, ``text`` below it.

        The body's font shrinks step by step (down to :data:`MIN_BODY_FONT`) before any line moves
        to a second page: a few lines overflowing onto a page of their own read as a lost page.
        Headings (lines in capitals) are bold.
        """
        fig = new_page(title, subtitle)
        top = 0.865 if subtitle else 0.9
        first, *rest = lead.split("\n", 1)
        head_lines = wrap_lines(first, 110)
        rest_lines = wrap_lines(rest[0], 140) if rest else []
        fig.text(0.04, top, "\n".join(head_lines), fontsize=12.5, fontweight="bold", va="top", ha="left",
                 linespacing=1.35, bbox={"boxstyle": "round,pad=0.55", "fc": "#e8eef6", "ec": "#8ba3bf"})
        y = top - (len(head_lines) * 12.5 * 1.35 + 14) / 72 / PAGE[1]
        if rest_lines:
            fig.text(0.04, y, "\n".join(rest_lines), fontsize=10.5, va="top", ha="left", linespacing=1.35)
            y -= (len(rest_lines) * 10.5 * 1.35 + 8) / 72 / PAGE[1]
        avail = y - 0.025
        for fs in BODY_FONTS:
            lines = wrap_lines(text, int(140 * 9.5 / fs))
            step = fs * 1.36 / 72 / PAGE[1]
            if len(lines) * step <= avail:
                break
        fit = int(avail / step)
        for i, line in enumerate(lines[:fit]):
            heading = line.strip() == line and line.isupper() and len(line) < 40
            fig.text(0.04, y - i * step, line, fontsize=fs, va="top", ha="left",
                     fontweight="bold" if heading else None)
        self.add(fig, png_name)
        if lines[fit:]:  # too long even at the smallest font: the rest continues, never cut
            self.text_pages(f"{title} (continued)", "\n".join(lines[fit:]), width=10_000, fontsize=fs)

    def table_pages(
        self,
        title: str,
        df: pd.DataFrame,
        *,
        note: str | None = None,
        rows_per_page: int = 24,
        cell_colours: pd.DataFrame | None = None,
        col_widths: list[float] | None = None,
        fontsize: float = 8.5,
        wrap: dict[str, int] | None = None,
    ) -> None:
        """Render a DataFrame as table pages (split when long); ``wrap`` maps column -> wrap width."""
        if df.empty:
            self.text_pages(title, note or "(no rows)")
            return
        shown = df.astype(str).copy()
        for col, w in (wrap or {}).items():
            if col in shown.columns:
                shown[col] = shown[col].map(lambda s, w=w: "\n".join(textwrap.wrap(s, w)) or s)
        n_pages = int(np.ceil(len(shown) / rows_per_page))
        for k in range(n_pages):
            part = shown.iloc[k * rows_per_page : (k + 1) * rows_per_page]
            suffix = f" ({k + 1}/{n_pages})" if n_pages > 1 else ""
            fig = new_page(f"{title}{suffix}", note if k == 0 else None)
            ax = fig.add_axes((0.04, 0.04, 0.92, 0.83 if note and k == 0 else 0.86))
            ax.axis("off")
            colours = None
            if cell_colours is not None:
                colours = cell_colours.iloc[k * rows_per_page : (k + 1) * rows_per_page].to_numpy().tolist()
            tab = ax.table(
                cellText=part.to_numpy().tolist(),
                colLabels=list(part.columns),
                loc="upper center",
                cellLoc="left",
                colLoc="left",
                cellColours=colours,
                colWidths=col_widths or auto_widths(shown),
            )
            tab.auto_set_font_size(False)
            # wide tables: a smaller font (down to 6 pt) rather than clipped cells
            need = sum(_chars(shown)) * 0.66 / 72 / (0.92 * PAGE[0])
            tab.set_fontsize(fontsize if col_widths else max(6.0, min(fontsize, 1.0 / need)))
            nlines = part.apply(lambda col: col.str.count("\n") + 1).max(axis=1).to_numpy()
            base = min(0.9 / (len(part) + 1), 0.05)
            for (r, _c), cell in tab.get_celld().items():
                if r == 0:
                    cell.set_text_props(fontweight="bold")
                    cell.set_facecolor("#dde3ea")
                    cell.set_height(base)
                else:
                    cell.set_height(base * max(1.0, 0.75 * nlines[r - 1]))
                cell.set_edgecolor("#b0b0b0")
            self.add(fig)

    def table_stack(
        self,
        title: str,
        items: list[tuple[str, pd.DataFrame, pd.DataFrame | None]],
        *,
        note: str | None = None,
        fontsize: float = 8.5,
        wrap: dict[str, int] | None = None,
        budget: float = 29.0,
    ) -> None:
        """Several (caption, table, cell colours) on as few pages as they fit, one under the other.

        Short tables share a page (no half-empty pages); a table longer than a page goes through
        :meth:`table_pages`. Row heights follow the number of wrapped lines in the row.
        """
        prepared = []
        for caption, df, colours in items:
            shown = df.astype(str).copy()
            for col, w in (wrap or {}).items():
                if col in shown.columns:
                    shown[col] = shown[col].map(lambda v, w=w: "\n".join(textwrap.wrap(v, w)) or v)
            lines = (
                shown.apply(lambda c: c.str.count("\n") + 1).max(axis=1).to_numpy(float)
                if len(shown)
                else np.ones(0)
            )
            heights = np.maximum(1.0, 0.75 * lines)
            prepared.append((caption, shown, colours, heights))
        page: list = []
        used = 0.0
        first = True

        def flush() -> None:
            nonlocal page, used, first
            if not page:
                return
            fig = new_page(title if first else f"{title} (continued)", note if first else None)
            unit = min(0.84 / max(used, 1.0), 0.034)
            top = 0.89 - (0.03 * len(textwrap.wrap(note, 140)) if first and note else 0.0)
            for caption, shown, colours, heights in page:
                cap = textwrap.wrap(caption, 135) or [""]
                fig.text(0.04, top, "\n".join(cap), fontsize=10, fontweight="bold", va="top", ha="left")
                top -= (1.3 + 1.1 * (len(cap) - 1)) * unit
                if shown.empty:
                    continue
                h = unit * (heights.sum() + 1)
                ax = fig.add_axes((0.04, top - h, 0.92, h))
                ax.axis("off")
                widths = auto_widths(shown)
                # wide tables: a smaller font (down to 6 pt) rather than clipped cells
                need = sum(_chars(shown)) * 0.66 / 72 / (0.92 * PAGE[0])  # table width per point of font
                fs = max(6.0, min(fontsize, 1.0 / need))
                frac = min(1.0, need * fs)
                tab = ax.table(
                    cellText=shown.to_numpy().tolist(),
                    colLabels=list(shown.columns),
                    cellLoc="left",
                    colLoc="left",
                    cellColours=None if colours is None else colours.to_numpy().tolist(),
                    colWidths=[w * frac for w in widths],
                    bbox=(0, 0, frac, 1),
                )
                tab.auto_set_font_size(False)
                tab.set_fontsize(fs)
                for (r, _c), cell in tab.get_celld().items():
                    if r == 0:
                        cell.set_text_props(fontweight="bold")
                        cell.set_facecolor("#dde3ea")
                        cell.set_height(1.0)
                    else:
                        cell.set_height(float(heights[r - 1]))
                    cell.set_edgecolor("#b0b0b0")
                top -= h + 0.9 * unit
            self.add(fig)
            page, used, first = [], 0.0, False

        for caption, shown, colours, heights in prepared:
            need = (
                heights.sum() + (1 if len(shown) else 0) + 2.2 + 1.1 * (len(textwrap.wrap(caption, 135)) - 1)
            )
            if need > budget:
                flush()
                self.table_pages(
                    f"{title}: {caption}" if first else f"{title} (continued): {caption}",
                    shown,
                    note=note if first else None,
                    cell_colours=colours,
                    fontsize=fontsize,
                )
                first = False
                continue
            # a caption without rows ("Every cell finished ok.") is one line: it joins the page before
            # it (flush scales that page's line height to fit) rather than taking a page of its own
            if used + need > budget and not (shown.empty and page):
                flush()
            page.append((caption, shown, colours, heights))
            used += need
        flush()


def _chars(df: pd.DataFrame) -> list[int]:
    """Rough width of each column in characters (longest line of the header or a value, plus padding)."""

    def longest(v: str) -> int:
        return max((len(x) for x in str(v).split("\n")), default=0)

    return [max(1.25 * longest(c), max((longest(v) for v in df[c]), default=0), 3) + 3 for c in df.columns]
