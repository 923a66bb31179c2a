"""The HTML report's result table and robustness curves, as markup built from the loaded results.

The table has one row per summary row (every model x attack x budget, the worst case included),
with the robust accuracy's 95% Wilson interval from the same function the PDF's tables use
(:func:`~.load.wilson`, k = robust accuracy x n). The curves are plain inline SVG, one panel per
bounded attack and per norm's worst case (:func:`~.curves.curve_panels`, as in the PDF), every point
carrying a ``<title>`` the browser shows on hover: no script, no library.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from .curves import curve_panels, incomplete_budgets
from .load import NORM_NAMES, WORST_CASE, ResultsBundle, eps_label, wilson

#: the table's columns: (key, heading, tooltip)
TABLE_COLUMNS = [
    ("model", "model", ""),
    ("attack", "attack", ""),
    ("norm", "norm", ""),
    ("eps", "eps", "budget, in /255 pixel units (unbounded: minimal-perturbation attack)"),
    ("n", "n", "samples evaluated"),
    ("clean_acc", "clean %", "clean accuracy"),
    ("robust_acc", "robust %", "robust accuracy: correct clean and not broken"),
    ("ci", "95% CI", "Wilson score interval of the robust accuracy"),
    ("cond_acc", "robust | clean-correct %", "robust accuracy among clean-correct images"),
    ("asr", "success %", "attack success rate among clean-correct images"),
    ("median_norm", "median norm", "median perturbation norm of the successful adversarial examples"),
    ("status", "status", "ok, failed, invalid or not-applicable (message on hover)"),
]


def pct(value: float) -> str:
    """A share as the table shows it: one decimal of a percentage, '' when not a number."""
    return "" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def table_rows(bundle: ResultsBundle) -> list[dict[str, Any]]:
    """Every summary row with its interval, in a stable order: norm, attack (worst case last), model, eps."""
    s = bundle.summary.copy()
    s["_wc"] = s["attack"] == WORST_CASE
    s = s.sort_values(["norm", "_wc", "attack", "model", "eps"], kind="stable")
    rows = []
    for r in s.itertuples(index=False):
        ok = r.status == "ok"
        robust = float(r.robust_acc) if ok else math.nan
        n = int(r.n)
        lo, hi = wilson(robust * n, n) if np.isfinite(robust) else (math.nan, math.nan)
        clean = float(r.clean_acc)
        cond = robust / clean if np.isfinite(robust) and clean > 0 else math.nan
        rows.append({
            "model": str(r.model), "attack": str(r.attack), "norm": str(r.norm), "eps": float(r.eps), "n": n,
            "clean_acc": clean, "robust_acc": robust, "ci_lo": lo, "ci_hi": hi, "cond_acc": cond,
            "asr": float(r.attack_success_rate) if ok else math.nan,
            "median_norm": float(r.median_norm) if ok else math.nan,
            "status": str(r.status), "message": str(r.message or ""),
        })
    return rows


def _sort_value(v: float) -> str:
    """``data-v`` of a number: sortable in the page's script; NaN sorts last, inf (unbounded) after all."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return "Infinity" if math.isinf(v) else repr(float(v))


def table_html(rows: list[dict[str, Any]]) -> str:
    """The sortable table: text a person reads, ``data-v`` numbers the script sorts by."""
    head = "".join(f'<th data-key="{k}" title="{escape(tip)}">{escape(h)}</th>'
                   for k, h, tip in TABLE_COLUMNS)
    body = []
    for r in rows:
        norm_text = "-" if not np.isfinite(r["median_norm"]) else (
            f"{r['median_norm'] * 255:.3g}/255" if r["norm"] == "linf" else f"{r['median_norm']:.3g}")
        ci = "" if not np.isfinite(r["ci_lo"]) else f"{pct(r['ci_lo'])}&ndash;{pct(r['ci_hi'])}"
        status = escape(r["status"]) if r["status"] == "ok" else f"<b>{escape(r['status'].upper())}</b>"
        cells = [
            (r["model"], escape(r["model"])), (r["attack"], escape(r["attack"])),
            (r["norm"], escape(r["norm"])),
            (_sort_value(r["eps"]), escape(eps_label(r["eps"]))), (str(r["n"]), str(r["n"])),
            (_sort_value(r["clean_acc"]), pct(r["clean_acc"])),
            (_sort_value(r["robust_acc"]), pct(r["robust_acc"]) if r["status"] == "ok" else status),
            (_sort_value(r["ci_lo"]), ci), (_sort_value(r["cond_acc"]), pct(r["cond_acc"])),
            (_sort_value(r["asr"]), pct(r["asr"])), (_sort_value(r["median_norm"]), norm_text),
            (r["status"], status),
        ]
        tds = "".join(f'<td data-v="{escape(v)}">{t}</td>' for v, t in cells)
        title = f' title="{escape(r["message"])}"' if r["message"] else ""
        body.append(f'<tr class="st-{escape(r["status"])}" data-model="{escape(r["model"])}" '
                    f'data-attack="{escape(r["attack"])}" data-eps="{_sort_value(r["eps"])}"{title}>'
                    f'{tds}</tr>')
    return (f'<table id="results" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


# ------------------------------------------------------------------------------------------ curves
W, H = 330, 230
LEFT, RIGHT, TOP, BOTTOM = 42, 10, 26, 34


def hex_colour(rgb: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def _panel_svg(attack: str, norm: str, df: pd.DataFrame, palette: dict[str, str],
               summary: pd.DataFrame) -> str:
    ok = df[(df["status"] == "ok") & np.isfinite(df["robust_acc"].astype(float))]
    xs = ok["eps"].astype(float).to_numpy() * 255
    x_max = float(xs.max()) if len(xs) and xs.max() > 0 else 1.0

    def sx(x: float) -> float:  # eps in /255 -> pixels
        return LEFT + (W - LEFT - RIGHT) * x / x_max

    def sy(y: float) -> float:  # accuracy share -> pixels
        return TOP + (H - TOP - BOTTOM) * (1 - y)

    title = f"{attack} ({NORM_NAMES.get(norm, norm)})" if attack != WORST_CASE else \
        f"worst case over {NORM_NAMES.get(norm, norm)} attacks"
    parts = [f'<svg class="curve" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text class="ptitle" x="{W / 2}" y="15" text-anchor="middle">{escape(title)}</text>']
    for y in (0, 0.25, 0.5, 0.75, 1.0):  # grid and y labels
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{sy(y) + 3:.1f}" text-anchor="end">{int(y * 100)}'
                     '</text>')
    for x in sorted(set(np.round(xs, 6))):
        parts.append(f'<text class="tick" x="{sx(x):.1f}" y="{H - BOTTOM + 13}" text-anchor="middle">'
                     f'{x:.3g}</text>')
    parts.append(f'<text class="axis" x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
                 'eps (/255)</text><text class="axis" x="10" y="{0}" transform="rotate(-90 10 {0})" '
                 'text-anchor="middle">robust accuracy %</text>'.format((TOP + H - BOTTOM) / 2))
    for model, d in ok.groupby("model", sort=True):
        d = d.sort_values("eps")
        colour = palette.get(str(model), "#444")
        e = d["eps"].astype(float).to_numpy()
        acc = d["robust_acc"].astype(float).to_numpy()
        n = d["n"].astype(int).to_numpy()
        bands = [wilson(a * k, k) for a, k in zip(acc, n, strict=True)]
        missing = incomplete_budgets(summary, str(model), norm) if attack == WORST_CASE else {}
        if len(e) > 1:
            upper = " ".join(f"{sx(x * 255):.1f},{sy(b[1]):.1f}" for x, b in zip(e, bands, strict=True))
            lower = " ".join(f"{sx(x * 255):.1f},{sy(b[0]):.1f}" for x, b in
                             reversed(list(zip(e, bands, strict=True))))
            parts.append(f'<polygon class="band" fill="{colour}" points="{upper} {lower}"/>')
            line = " ".join(f"{sx(x * 255):.1f},{sy(a):.1f}" for x, a in zip(e, acc, strict=True))
            parts.append(f'<polyline class="line" stroke="{colour}" points="{line}"/>')
        for x, a, k, b in zip(e, acc, n, bands, strict=True):
            gap = missing.get(round(float(x), 9))
            tip = (f"{model}\n{attack} at {eps_label(float(x))}: {pct(a)} % robust "
                   f"(95% CI {pct(b[0])}-{pct(b[1])} %, n = {k})"
                   + (f"\nnot every attack ran here: {', '.join(gap)} did not" if gap else ""))
            hollow = ' fill="white"' if gap else f' fill="{colour}"'
            parts.append(f'<circle class="pt" cx="{sx(x * 255):.1f}" cy="{sy(a):.1f}" r="4" stroke="{colour}"'
                         f'{hollow} data-model="{escape(str(model))}" data-eps="{float(x)!r}" '
                         f'data-acc="{float(a)!r}"><title>{escape(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def curves_html(bundle: ResultsBundle, palette: dict[str, str]) -> str:
    """Every panel of the PDF's curves, as inline SVG, and one legend of model colours."""
    panels = curve_panels(bundle)
    if not panels:
        return "<p>No bounded attack has results, so there are no curves.</p>"
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{escape(m)} '
                     for m, c in palette.items())
    svgs = "".join(_panel_svg(a, n, d, palette, bundle.summary) for a, n, d in panels)
    return (f'<p class="legend">{legend}<span class="note">bands: 95% Wilson intervals; hover a point for '
            'its value; a hollow point on a worst-case curve: not every attack of that norm ran at that '
            f'budget.</span></p><div class="curves">{svgs}</div>')
