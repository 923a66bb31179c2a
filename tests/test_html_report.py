"""The HTML report in a real browser: headless Chromium opens it from disk (file://, no server).

Checked in the page the browser built (``--dump-dom``): the table shows summary.csv's numbers, a
filter given in the address changes what the explorer shows (and only matching samples remain), the
address can sort the table, no console message or uncaught error appears; a screenshot is kept as
an artefact (its path is printed). Without Chromium (``make browser`` installs it) the browser test
skips with that reason; the file-level checks below run anyway.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta.engine.api import run_sweep
from robustbench_lta.reporting.html import HTML_MARK, build_html_report, folder_size
from robustbench_lta.results import ResultsLayout

EXPLORER_K = 6
EPS = [0.0, 2 / 255, 8 / 255]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny sweep and its HTML report: two untrained SmallCNNs (one with attention) on 32 digit images
    labelled by the attention model's own predictions, so every image is clean-correct for it and the
    attacks have something to break (no training: seconds, not minutes, on a busy CPU)."""
    from robustbench_lta.data.registry import load_dataset
    from robustbench_lta.models.registry import create_model

    root = tmp_path_factory.mktemp("html")
    torch.manual_seed(0)
    models = {name: create_model(name, width=0.25).eval() for name in ("smallcnn", "smallcnn_att2_concat_pc")}
    x, _ = load_dataset("cluttered-digits", split="test", n=32).tensors()
    with torch.no_grad():
        y = models["smallcnn_att2_concat_pc"](x).argmax(1)
    run_sweep(models, ["fgsm", {"name": "pgd-linf", "params": {"steps": 3}}], EPS, data=(x, y),
              classes=[str(c) for c in range(10)], batch_size=32, out=root / "results", progress=False,
              sanity_samples=0, attention_samples=0, explorer_samples=EXPLORER_K)
    build_html_report([root / "results"], root / "html")
    return root / "results", root / "html"


def test_the_sweep_stores_the_first_k_samples_of_every_cell(html_report) -> None:
    results, _ = html_report
    layout = ResultsLayout(results)
    for model in ("smallcnn", "smallcnn_att2_concat_pc"):
        for attack in ("fgsm", "pgd-linf"):
            with np.load(layout.explorer_npz(model, attack), allow_pickle=False) as z:
                assert list(z["position"]) == list(range(EXPLORER_K))
                assert z["clean"].dtype == np.uint8 and z["delta"].dtype == np.int8
                assert z["delta"].shape[:2] == (len(EPS), EXPLORER_K)
                # no perturbation exceeds its budget (the stored scale is the measured L-inf norm)
                assert np.all(z["delta_max"] <= np.asarray(EPS)[:, None] + 1e-6)
                assert ("clean_level0" in z.files) == model.endswith("_pc")


def _own_label_data(n: int) -> tuple[dict[str, torch.nn.Module], torch.Tensor, torch.Tensor]:
    from robustbench_lta.data.registry import load_dataset
    from robustbench_lta.models.registry import create_model

    torch.manual_seed(1)
    model = create_model("smallcnn_att2_concat_pc", width=0.25).eval()
    x, _ = load_dataset("cluttered-digits", split="test", n=n).tensors()
    with torch.no_grad():
        return {"att": model}, x, model(x).argmax(1)


def test_explorer_images_cost_no_model_call_and_survive_resume_and_sharding(tmp_path) -> None:
    models, x, y = _own_label_data(12)
    kw = {"data": (x, y), "classes": [str(c) for c in range(10)], "batch_size": 12, "progress": False,
          "sanity_samples": 0, "attention_samples": 0}
    attacks = [{"name": "pgd-linf", "params": {"steps": 2}}]
    plain = run_sweep(models, attacks, EPS, out=tmp_path / "plain", explorer_samples=0, **kw)
    kept = run_sweep(models, attacks, EPS, out=tmp_path / "kept", explorer_samples=5, shard_size=3, **kw)
    # the same work and the same answers: the pictures come from forwards the units run anyway
    cols = ["model", "attack", "eps", "robust_acc", "forward", "backward"]
    pd.testing.assert_frame_equal(plain[cols], kept[cols])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "plain" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "kept" / "samples.parquet"))
    assert not (tmp_path / "plain" / "explorer").exists()
    path = ResultsLayout(tmp_path / "kept").explorer_npz("att", "pgd-linf")
    with np.load(path, allow_pickle=False) as z:
        first = {k: z[k] for k in z.files}
    assert list(first["position"]) == [0, 1, 2, 3, 4]  # two shards (0-3, 3-6) merged in order
    # worst-case accounting: a sample broken at 2/255 keeps that example at 8/255, as its record does
    samples = pd.read_parquet(tmp_path / "kept" / "samples.parquet").set_index(["eps", "index"])
    carried = 0
    for slot, index in enumerate(first["index"]):
        at_large = samples.loc[(EPS[2], int(index))]
        if at_large["broken"] and not at_large["attacked"] and at_large["clean_pred"] == at_large["label"]:
            assert np.array_equal(first["delta"][2, slot], first["delta"][1, slot])
            assert first["delta_max"][2, slot] <= EPS[1] + 1e-6
            carried += 1
    assert carried  # this data has such samples: the check above is not vacuous
    # a re-run reuses every unit and writes the same pictures
    again = run_sweep(models, attacks, EPS, out=tmp_path / "kept", explorer_samples=5, shard_size=3, **kw)
    assert again.attrs["counts"]["units_run"] == 0
    with np.load(path, allow_pickle=False) as z:
        assert all(np.array_equal(z[k], first[k]) for k in first)


def test_the_folder_is_self_contained(html_report) -> None:
    _, html = html_report
    assert (html / HTML_MARK).is_file()
    for name in ("index.html", "report.js", "report.css", "data.js"):
        text = (html / name).read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f"{name} refers to the network"
        assert "@import" not in text and "url(http" not in text
    data = json.loads((html / "data.js").read_text().removeprefix("window.RB_REPORT = ").rstrip(";\n"))
    pictures = [r["clean_img"] for r in data["records"] if r["clean_img"]]
    for r in data["records"]:
        if r["pictures"]:
            pictures += [r["pictures"]["adv"], r["pictures"]["pert"]]
            pictures += [m[k] for m in r["pictures"]["maps"] for k in ("clean", "adv")]
    assert pictures and all((html / p).is_file() for p in pictures)
    print(f"\nHTML folder: {folder_size(html) / 1024:.0f} KiB, {len(data['records'])} explorer records")


class _Page(HTMLParser):
    """What the test reads from the dumped DOM: table rows, explorer cards, the count and error box."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, object]] = []
        self.cards: list[dict[str, str]] = []
        self.count: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.errors = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "tr" and "data-model" in a:
            self.rows.append({**a, "cells": []})
        elif tag == "td" and self.rows:
            self._in = "td"
            self.rows[-1]["cells"].append("")  # type: ignore[union-attr]
        elif tag == "div" and "card" in a.get("class", "").split():
            self.cards.append(a)
        elif a.get("id") == "explorer-count":
            self.count = a
        elif a.get("id") == "js-errors":
            self._in = "errors"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "td":
            self.rows[-1]["cells"][-1] += data  # type: ignore[index]
        elif self._in == "errors":
            self.errors += data


def _open(browser: str, index: Path, tmp: Path, address: str = "", screenshot: Path | None = None
          ) -> tuple[_Page, list[str]]:
    """Load the page headless; the DOM after its scripts ran, and every console line of the browser."""
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
            f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=4000", "--enable-logging=stderr",
            "--v=0"]
    args += [f"--screenshot={screenshot}", "--window-size=1280,2000"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, index.as_uri() + address], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    page = _Page()
    page.feed(proc.stdout)
    return page, console


def _pct(v: float) -> str:
    return "" if not np.isfinite(v) else f"{100 * v:.1f}"


def test_in_chromium_table_filter_sort_and_no_console_error(html_report, tmp_path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (`make browser` installs Debian's chromium package)")
    results, html = html_report
    t0 = time.perf_counter()
    index = html / "index.html"

    page, console = _open(browser, index, tmp_path)
    assert console == [], console
    assert page.body.get("data-ready") == "1" and page.errors.strip() == ""
    # the table: one row per summary.csv row, with its numbers
    summary = pd.read_csv(results / "summary.csv")
    assert len(page.rows) == len(summary)
    shown = {(r["data-model"], r["data-attack"], round(float(r["data-eps"]), 9)): r["cells"]
             for r in page.rows}
    for s in summary.itertuples(index=False):
        cells = shown[(s.model, s.attack, round(float(s.eps), 9))]
        assert cells[4] == str(s.n) and cells[5] == _pct(s.clean_acc) and cells[6] == _pct(s.robust_acc)
    # the explorer: every stored sample of every cell, then only the filtered ones
    total = int(page.count["data-total"])
    samples = pd.read_parquet(results / "samples.parquet")
    with np.load(ResultsLayout(results).explorer_npz("smallcnn", "fgsm"), allow_pickle=False) as z:
        stored = samples[samples["index"].isin(z["index"])]  # the same K samples in every cell
    assert total == len(stored) == int(page.count["data-matching"])
    want = stored[(stored["model"] == "smallcnn_att2_concat_pc") & (stored["attack"] == "pgd-linf")
                  & stored["broken"]]
    filtered, console = _open(browser, index, tmp_path,
                              "#model=smallcnn_att2_concat_pc&attack=pgd-linf&broken=1")
    assert console == [], console
    assert int(filtered.count["data-matching"]) == len(want) < total
    assert len(filtered.cards) == len(want) and filtered.cards
    assert {(c["data-model"], c["data-attack"], c["data-broken"]) for c in filtered.cards} == {
        ("smallcnn_att2_concat_pc", "pgd-linf", "1")}
    assert sorted(int(c["data-index"]) for c in filtered.cards) == sorted(want["index"].astype(int))
    # the address sorts the table: descending robust accuracy, failed cells (no number) last
    ordered, _ = _open(browser, index, tmp_path, "#sort=-robust_acc")
    values = [float(r["cells"][6]) for r in ordered.rows if r["cells"][6]]
    assert values == sorted(values, reverse=True) and not math.isnan(values[0])
    # a screenshot, kept as the test's artefact
    shot = tmp_path / "html_report.png"
    _open(browser, index, tmp_path, "#model=smallcnn_att2_concat_pc&attack=pgd-linf", screenshot=shot)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot} (browser checks {time.perf_counter() - t0:.1f} s)")
    if os.environ.get("RBLTA_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["RBLTA_KEEP_SCREENSHOT"])
