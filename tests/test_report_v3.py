"""Report v3: page-1 facts that must not mislead, and a demo-sized sweep on at most nine pages.

The demo-shaped folder is test_reporting's fabricated sweep (fgsm and pgd-linf at 0-8/255, cw-l2)
plus the demo's other attacks: gaussian-noise at every budget, square at 2 and 8/255, autoattack at
8/255 only, with the worst case recomputed per sample over all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_reporting import ATT, BASE, EPS, _pdf_text, _summary_row, make_results

from robustbench_lta.reporting.protocol import strength_at


def _rows(accs: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "norm": "linf", "attack": a, "status": "ok", "eps": 8 / 255,
                          "robust_acc": r} for a, r in accs.items()])


def test_a_tie_names_the_stronger_attack_family_not_the_single_step_one() -> None:
    specs = {"fgsm": ("fgsm", {}), "pgd-linf": ("pgd-linf", {"steps": 10}),
             "gaussian-noise": ("gaussian-noise", {}), "autoattack": ("autoattack", {})}
    assert strength_at(_rows({"fgsm": 0.0, "pgd-linf": 0.0}), specs, "m", "linf", 8 / 255)["strongest"] == \
        ("pgd-linf", 0.0)
    got = strength_at(_rows({"fgsm": 0.0, "gaussian-noise": 0.0, "pgd-linf": 0.0, "autoattack": 0.0}), specs,
                      "m", "linf", 8 / 255)
    assert got["strongest"] == ("autoattack", 0.0) and set(got["strong"]) == {"autoattack"}
    # a lower figure still wins whatever its family
    lower = strength_at(_rows({"fgsm": 0.1, "pgd-linf": 0.2}), specs, "m", "linf", 8 / 255)
    assert lower["strongest"][0] == "fgsm"
    # a cascade row is looked up by its attack's spec
    got = strength_at(_rows({"autoattack (cascade)": 0.05, "fgsm": 0.3}), specs, "m", "linf", 8 / 255)
    assert got["strong"] == {"autoattack (cascade)": "AutoAttack"}


def test_an_outside_models_selection_note_gives_no_retrain_advice() -> None:
    from robustbench_lta.training.selection import selection_note

    zoo = {"source": "robustbench:cifar10/Linf/Standard", "architecture": "WideResNet", "details": {}}
    note = selection_note(zoo, "Standard")
    assert note is not None and "outside model" in note and "Retrain" not in note
    ours = {"source": "runs/x/best.safetensors", "details": {"training": {"epochs": 3}}}
    assert "Retrain" in selection_note(ours, "ours")  # a project checkpoint without a selection section


def test_worst_case_budgets_where_an_attack_did_not_run_are_named() -> None:
    from robustbench_lta.reporting.curves import incomplete_budgets

    rows = [{"model": "m", "norm": "linf", "attack": a, "status": "ok", "eps": e / 255, "robust_acc": 0.5}
            for a, grid in (("fgsm", [0, 2, 4, 8]), ("pgd-linf", [2, 4, 8]), ("autoattack", [8]))
            for e in grid]
    rows.append({"model": "m", "norm": "linf", "attack": "worst-case", "status": "ok", "eps": 4 / 255,
                 "robust_acc": 0.4})
    rows.append({"model": "m", "norm": "linf", "attack": "pgd-linf (cascade)", "status": "ok",
                 "eps": 8 / 255, "robust_acc": 0.3})
    got = incomplete_budgets(pd.DataFrame(rows), "m", "linf")
    assert got == {round(2 / 255, 9): ["autoattack"], round(4 / 255, 9): ["autoattack"]}


def test_the_selection_recorded_under_details_is_found() -> None:
    from robustbench_lta.training.selection import selection_summary

    card = {"source": "runs/demo_vgg16/best.safetensors", "details": {"selection": {
        "rule": "best validation accuracy", "split": "validation", "source_split": "train", "n": 499,
        "fraction": 0.1, "epoch": 7, "val_accuracy": 0.9198}}}
    assert selection_summary(card).startswith("selection: best validation accuracy on a validation split")


# ----------------------------------------------------------------------------- a demo-shaped sweep
EXTRA = (("gaussian-noise", EPS, {}), ("square", [2 / 255, 8 / 255], {"n_queries": 100}),
         ("autoattack", [8 / 255], {}))


def make_demo_like(folder: Path) -> Path:
    """test_reporting's folder plus the demo's weak, black-box and single-budget attacks."""
    make_results(folder)
    rng = np.random.default_rng(1)
    samples = pd.read_parquet(folder / "samples.parquet")
    summary = pd.read_parquet(folder / "summary.parquet")
    summary = summary[summary["attack"] != "worst-case"]
    new_samples, rows = [], []
    for m in (BASE, ATT):
        pgd = samples[(samples["model"] == m) & (samples["attack"] == "pgd-linf")]
        for attack, grid, _params in EXTRA:
            for e in grid:
                g = pgd[np.isclose(pgd["eps"], e)].assign(attack=attack)
                correct = g["clean_pred"] == g["label"]
                if attack == "gaussian-noise":  # breaks nothing
                    g["broken"] = ~correct
                elif attack == "square":  # weaker than PGD: misses some
                    g["broken"] = g["broken"] & (~correct | (rng.random(len(g)) > 0.3))
                else:  # stronger than PGD: breaks a few more
                    g["broken"] = g["broken"] | (rng.random(len(g)) < 0.1)
                g["adv_pred"] = np.where(g["broken"] & correct, (g["label"] + 1) % 10, g["clean_pred"])
                new_samples.append(g)
                rows.append(_summary_row(m, attack, "linf", e, g, 1.0))
    samples = pd.concat([samples, *new_samples], ignore_index=True)
    linf = samples[np.isfinite(samples["eps"])]
    for m in (BASE, ATT):  # the worst case: broken by any attack at any budget up to eps
        d = linf[linf["model"] == m]
        first = d.drop_duplicates("index").set_index("index").sort_index()
        for e in EPS:
            broken = d[d["eps"] <= e + 1e-9].groupby("index")["broken"].any().reindex(first.index)
            g = pd.DataFrame({"label": first["label"], "clean_pred": first["clean_pred"],
                              "broken": broken.to_numpy(bool), "norm": np.nan})
            rows.append(_summary_row(m, "worst-case", "linf", e, g, 5.0))
    summary = pd.concat([summary, pd.DataFrame(rows)], ignore_index=True)
    samples.to_parquet(folder / "samples.parquet")
    summary.to_parquet(folder / "summary.parquet")
    man = json.loads((folder / "manifest.json").read_text())
    for attack, grid, params in EXTRA:
        man["attacks"][attack] = {"name": attack, "norm": "linf", "kind": "white-box", "bounded": True,
                                  "params": params, "eps": grid}
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from robustbench_lta.reporting.pdf import build_report

    root = tmp_path_factory.mktemp("demo_like")
    folder = make_demo_like(root / "demo_like")
    return folder, build_report([folder], root / "demo.pdf")


def test_a_demo_sized_sweep_fits_nine_pages_and_page_one_leads_with_the_answer(demo_report) -> None:
    folder, res = demo_report
    pages, text = _pdf_text(res.pdf)
    assert pages <= 9 and res.pages == pages
    first = text.split("2. Robustness curves")[0]
    v = res.verdict
    head = v["norms"]["linf"]["robust_acc"]
    b, a = 100 * head[BASE][8 / 255], 100 * head[ATT][8 / 255]
    assert first.index("Bottom line:") < first.index("VERDICT")
    assert f"Bottom line: {ATT} is more robust than {BASE} at 8/255" in first
    assert f"{a:.1f}% vs {b:.1f}% robust accuracy" in first  # the verdict's numbers, not new ones
    assert "n = 240 images per model; the same images for every model" in first  # n said plainly
    assert "significantly more robust at 4 of 4 budgets (1-8/255)" in first  # Holm, summarised
    assert first.count(f"({ATT})") == 0
    assert "Strongest attack at 8/255: autoattack (strong) for both models" in first
    assert "eps 0, 1, 2, 4, 8/255" in first and "eps 2, 8/255" in first  # budgets once, unit at the end


def test_tables_on_paper_drop_repeats_and_say_where_the_rest_is(demo_report) -> None:
    folder, res = demo_report
    _, text = _pdf_text(res.pdf)
    files = res.pdf.parent / f"{res.pdf.stem}_files"
    tables = text  # pypdf gives a page's table cells before its title: the whole text is searched
    assert "Attack success rate (%)" not in tables and "Seconds per cell" not in tables
    assert "Area under the robustness curves" not in tables
    for name in ("attack_success_rate", "seconds_per_cell", "curve_auc"):
        assert f"{name}.csv" in tables and (files / f"{name}.csv").is_file()
    # what left the paper is re-derivable: success = 100 minus robust among clean-correct, per cell
    success = pd.read_csv(files / "attack_success_rate.csv")
    cond = pd.read_csv(files / "robust_among_clean_correct.csv")
    both = success.merge(cond, on=["attack", "model", "eps"])
    assert len(both) == len(success)
    assert np.allclose(both["attack_success_rate_%"], 100 - both["robust_among_clean_correct_%"], atol=1e-2)
    # one number format on paper: clean accuracy 81.25% prints as 81.2 like every other percentage
    clean = pd.read_csv(files / "clean_accuracy.csv")
    for value in clean["clean_acc_%"]:
        assert f" {value:.1f} " in f" {tables} "
        if round(value, 2) != round(value, 1):
            assert f"{value:.2f}" not in tables


def test_single_budget_attacks_share_a_panel_and_legends_sit_below_the_axes(demo_report) -> None:
    from robustbench_lta.reporting.curves import page_panels, robustness_curve_pages
    from robustbench_lta.reporting.load import load_results, model_palette

    folder, res = demo_report
    _, text = _pdf_text(res.pdf)
    assert "attacks at one or two budgets (L-inf)" in text
    assert "autoattack (L-inf)" not in text and "square (L-inf)" not in text  # no panel of their own
    bundle = load_results([folder])
    kinds = [p[0] for p in page_panels(bundle)]
    assert kinds == ["fgsm", "gaussian-noise", "pgd-linf", "few", "worst-case"]
    figs = robustness_curve_pages(bundle, model_palette(bundle.models), "2. Robustness curves", "robust")
    assert len(figs) == 1
    fig = figs[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        legends += 1
        # below the axes, so it covers no curve's first points
        assert leg.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
    assert legends == 5


def test_the_figure_attack_is_the_strongest_family_swept_by_the_reports_ranking() -> None:
    from robustbench_lta.config import SweepConfig, validate
    from robustbench_lta.engine.model_pass import figure_attack
    from robustbench_lta.engine.plan import build_attack_plans
    from robustbench_lta.reporting.attention_figures import figure_choice

    def choose(attacks: list[dict]) -> tuple[str | None, str | None]:
        cfg = validate(SweepConfig, {"models": [{"name": "m", "source": "smallcnn"}], "attacks": attacks,
                                     "eps": [0, 2 / 255, 4 / 255, 8 / 255]}, "test")
        plans = build_attack_plans(cfg)
        chosen = figure_attack(plans)
        manifest = {"attacks": {a.label: {"name": a.name, "norm": a.norm, "bounded": a.bounded,
                                          "params": a.params, "eps": list(a.eps)} for a in plans}}
        return (chosen.label if chosen else None), figure_choice(manifest)

    demo = [{"name": "fgsm"}, {"name": "gaussian-noise"}, {"name": "pgd-linf", "params": {"steps": 10}},
            {"name": "square", "params": {"n_queries": 100}, "eps": [2 / 255, 8 / 255]},
            {"name": "autoattack", "eps": [8 / 255]}, {"name": "deepfool"}]
    assert choose(demo) == ("autoattack", "autoattack")  # strong beats multi-step beats single-step
    assert choose(demo[:4]) == ("pgd-linf", "pgd-linf")  # not FGSM, which was listed first
    assert choose(demo[:2]) == ("fgsm", "fgsm")  # noise ranks with single-step; sweep order breaks it
    assert choose([{"name": "deepfool"}]) == (None, None)  # unbounded only: no figure


def test_the_map_page_has_one_colour_scale_and_a_colour_bar(tmp_path: Path) -> None:
    from robustbench_lta.reporting.attention_figures import map_grid_page

    folder = make_results(tmp_path / "run")
    fig = map_grid_page(ATT, folder / "attention" / f"{ATT}.npz", None, "4. Attention under attack",
                        strongest="autoattack")
    overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_alpha() is not None]
    assert overlays and len({im.get_clim() for im in overlays}) == 1  # one scale for every panel
    bars = [ax for ax in fig.axes if "1 = uniform" in ax.get_ylabel()]
    assert len(bars) == 1 and bars[0].get_ylim()[1] == pytest.approx(overlays[0].get_clim()[1])
    subtitle = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert "stored by an older sweep; the strongest L-inf attack swept is autoattack" in subtitle


def test_the_drift_legend_gives_each_encoding_one_meaning(demo_report) -> None:
    from robustbench_lta.reporting.attention_drift import drift_page, drift_table
    from robustbench_lta.reporting.load import load_results, model_palette

    folder, _res = demo_report
    bundle = load_results([folder])
    fig = drift_page(drift_table(bundle.attention), model_palette(bundle.models), "4. Attention (continued)")
    handles = fig.legends[0].legend_handles
    for h in handles:
        label = h.get_label()
        if label.startswith("level"):
            assert h.get_linestyle() == "None" and h.get_marker() not in ("None", "", None)
        if label.startswith("box mass"):
            assert h.get_marker() in ("None", "", None)
    js_lines = [ln for ax in fig.axes if ax.get_title().startswith("JS") for ln in ax.get_lines()]
    assert {ln.get_linestyle() for ln in js_lines if len(ln.get_xdata()) >= 3} == {"-"}
