"""Reporting: results folders -> PDF report, figures (PNG) and tables (CSV/Markdown), HTML report.

Reads only what the sweep wrote (docs/architecture.md, "Results folder"), never a model.
``build_report`` is imported lazily so that ``import robustbench_lta.reporting`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportResult", "build_html_report", "build_report", "load_results"]


def __getattr__(name: str) -> Any:
    if name in ("ReportResult", "build_report"):
        from . import pdf

        return getattr(pdf, name)
    if name == "build_html_report":
        from .html import build_html_report

        return build_html_report
    if name == "load_results":
        from .load import load_results

        return load_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
