"""The sweep engine: files, accounting, verification of plugin output, resumption, sanity checks."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta.engine.api import run_sweep
from robustbench_lta.engine.executors.worker import Worker
from robustbench_lta.errors import UserError
from robustbench_lta.results import SAMPLE_COLUMNS, SUMMARY_COLUMNS, figure_eps_indices

EPS = [0.0, 2 / 255, 8 / 255]
FAST_ATTACKS = [
    "fgsm",
    {"name": "pgd-linf", "params": {"steps": 5}},
    "gaussian-noise",
]


def _models(ckpts: dict[str, Path]) -> dict[str, str]:
    return {name: str(path) for name, path in ckpts.items()}


@pytest.fixture(scope="module")
def small_sweep(trained_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    summary = run_sweep(_models(trained_checkpoints), FAST_ATTACKS + [{"name": "deepfool"}], EPS, n=96,
                        batch_size=48, out=out, progress=False, sanity_samples=32, attention_samples=4)
    return out, summary


def test_sweep_writes_the_three_files_with_the_documented_columns(small_sweep):
    out, summary = small_sweep
    for name in ("summary.parquet", "summary.csv", "samples.parquet", "manifest.json", "sanity.csv"):
        assert (out / name).is_file(), name
    stored = pd.read_parquet(out / "summary.parquet")
    assert list(stored.columns) == SUMMARY_COLUMNS
    pd.testing.assert_frame_equal(stored, summary.reset_index(drop=True), check_dtype=False)
    samples = pd.read_parquet(out / "samples.parquet")
    assert list(samples.columns) == SAMPLE_COLUMNS
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("config", "seed", "versions", "git_commit", "device", "models", "dataset"):
        assert key in manifest
    assert all(m["sha256"] for m in manifest["models"].values())
    assert manifest["dataset"]["name"] == "cluttered-digits"  # taken from the checkpoint's card


def test_rows_cover_models_attacks_eps_and_worst_case(small_sweep):
    _, summary = small_sweep
    per_attack = summary[summary["attack"] != "worst-case"]
    for model in ("smallcnn", "smallcnn_att2_concat_pc"):
        for attack in ("fgsm", "pgd-linf", "gaussian-noise"):
            rows = per_attack[(per_attack["model"] == model) & (per_attack["attack"] == attack)]
            assert sorted(rows["eps"]) == pytest.approx(EPS)
            assert (rows["status"] == "ok").all(), rows["message"].tolist()
        deepfool = per_attack[(per_attack["model"] == model) & (per_attack["attack"] == "deepfool")]
        assert len(deepfool) == 1 and math.isinf(deepfool["eps"].iloc[0])
        worst = summary[(summary["model"] == model) & (summary["attack"] == "worst-case")]
        assert sorted(worst["eps"]) == pytest.approx(EPS)


def test_accuracy_numbers_are_consistent(small_sweep):
    _, summary = small_sweep
    ok = summary[summary["status"] == "ok"]
    # eps 0 equals clean accuracy; clean accuracy well above chance for the trained models
    zero = ok[ok["eps"] == 0]
    assert np.allclose(zero["robust_acc"], zero["clean_acc"])
    assert (ok["clean_acc"] > 0.3).all()  # chance is 0.1
    for model, part in ok.groupby("model"):
        pgd = part[part["attack"] == "pgd-linf"].set_index("eps")["robust_acc"]
        fgsm = part[part["attack"] == "fgsm"].set_index("eps")["robust_acc"]
        worst = part[part["attack"] == "worst-case"].set_index("eps")["robust_acc"]
        assert pgd[8 / 255] < pgd[0.0], model  # the attack really lowers accuracy
        assert (worst <= pgd + 1e-12).all() and (worst <= fgsm + 1e-12).all()


def test_worst_case_row_matches_per_sample_minimum(small_sweep):
    out, summary = small_sweep
    samples = pd.read_parquet(out / "samples.parquet")
    model = "smallcnn"
    s = samples[(samples["model"] == model) & (samples["attack"] != "deepfool")]
    for eps in EPS[1:]:
        upto = s[s["eps"] <= eps + 1e-12]
        broken_any = upto.groupby("index")["broken"].any()  # deepfool (l2) is not in the linf worst case
        expected = 1 - broken_any.mean()
        row = summary[(summary["model"] == model) & (summary["attack"] == "worst-case")
                      & (summary["norm"] == "linf") & np.isclose(summary["eps"], eps)]
        assert row["robust_acc"].iloc[0] == pytest.approx(expected)


def test_misclassified_samples_are_not_attacked_and_worst_case_skips_broken(small_sweep):
    out, _ = small_sweep
    samples = pd.read_parquet(out / "samples.parquet")
    wrong = samples[samples["clean_pred"] != samples["label"]]
    assert not wrong["attacked"].any()
    pgd = samples[(samples["attack"] == "pgd-linf") & (samples["model"] == "smallcnn")]
    small = pgd[np.isclose(pgd["eps"], 2 / 255)].set_index("index")
    large = pgd[np.isclose(pgd["eps"], 8 / 255)].set_index("index")
    broken_small = small.index[small["broken"] & (small["clean_pred"] == small["label"])]
    # broken at 2/255 -> not attacked again at 8/255, and counted broken there
    assert not large.loc[broken_small, "attacked"].any()
    assert large.loc[broken_small, "broken"].all()


def test_sanity_checks_are_recorded(small_sweep):
    out, _ = small_sweep
    sanity = pd.read_parquet(out / "sanity.parquet")
    checks = set(sanity["check"])
    for name in ("deterministic", "returns-logits", "zero-or-nonfinite-gradients", "near-chance-at-large-eps",
                 "eps0-equals-clean", "monotone-in-eps", "iterative-at-least-single-step",
                 "white-box-at-least-black-box"):
        assert name in checks, name
    assert set(sanity["status"]) <= {"pass", "warn", "fail"}
    det = sanity[sanity["check"] == "deterministic"]
    assert (det["status"] == "pass").all()


def test_attention_data_is_stored_for_attention_models(small_sweep):
    out, _ = small_sweep
    att = pd.read_parquet(out / "attention.parquet")
    assert set(att["model"]) == {"smallcnn_att2_concat_pc"}
    assert set(att["level"]) == {0, 1}
    assert ((att["js_divergence"] >= -1e-6) & (att["js_divergence"] <= 1 + 1e-6)).all()
    assert att["box_mass_clean"].between(0, 1).all()
    with np.load(out / "attention" / "smallcnn_att2_concat_pc.npz") as npz:
        assert npz["images"].shape[0] == 4
        # the figure's budgets only (results.figure_eps_indices): smallest nonzero, middle, largest
        shown = [EPS[i] for i in figure_eps_indices(EPS)]
        assert np.allclose(npz["eps"], shown) and len(shown) == min(3, sum(e > 0 for e in EPS))
        assert npz["adv_level0"].shape[:2] == (len(shown), 4)
        assert np.allclose(npz["clean_level1"].sum(axis=(1, 2)), 1, atol=1e-4)


def test_rerun_reuses_every_cell_and_gives_identical_tables(small_sweep, trained_checkpoints):
    out, summary = small_sweep
    before = {n: pd.read_parquet(out / f"{n}.parquet") for n in ("summary", "samples", "sanity")}
    again = run_sweep(_models(trained_checkpoints), FAST_ATTACKS + [{"name": "deepfool"}], EPS, n=96,
                      batch_size=48, out=out, progress=False, sanity_samples=32, attention_samples=4)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), summary.reset_index(drop=True))
    for name, df in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), df)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["units_run"] == 0 and counts["units_reused"] > 0


def test_interrupted_sweep_resumes_to_the_same_tables(trained_checkpoints, tmp_path, monkeypatch):
    models = {"smallcnn": str(trained_checkpoints["smallcnn"])}
    attacks = ["fgsm", {"name": "pgd-linf", "params": {"steps": 3}}]
    kw = dict(n=48, batch_size=48, progress=False, sanity_samples=16, attention_samples=0)
    reference = run_sweep(models, attacks, EPS, out=tmp_path / "ref", shard_size=24, **kw)

    real = Worker.run_unit
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed after two finished units
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Worker, "run_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(models, attacks, EPS, out=tmp_path / "cut", shard_size=24, **kw)
    assert len(list((tmp_path / "cut" / "units").glob("*/*.json"))) == 2
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["status"] == "running"
    monkeypatch.setattr(Worker, "run_unit", real)
    resumed = run_sweep(models, attacks, EPS, out=tmp_path / "cut", shard_size=24, **kw)
    drop = ["seconds"]  # wall-clock time is the only thing allowed to differ
    pd.testing.assert_frame_equal(resumed.drop(columns=drop), reference.drop(columns=drop))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cut" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "ref" / "samples.parquet"))
    assert not resumed.duplicated(["model", "attack", "norm", "eps"]).any()


BROKEN_PLUGINS = '''
import torch
from robustbench_lta.plugins import Attack, ThreatModel, register_attack


@register_attack
class OverBudget(Attack):
    """Moves every pixel by twice the budget."""
    name = "test-over-budget"
    threat_model = ThreatModel.LINF

    def perturb(self, model, x, y, eps):
        return (x + 2 * eps).clamp(0, 1) if eps > 0 else x + 0.1


@register_attack
class MakesNaN(Attack):
    """Returns NaN images."""
    name = "test-nan"
    threat_model = ThreatModel.LINF

    def perturb(self, model, x, y, eps):
        return torch.full_like(x, float("nan"))


@register_attack
class Raises(Attack):
    """Always raises."""
    name = "test-raises"
    threat_model = ThreatModel.LINF

    def perturb(self, model, x, y, eps):
        raise RuntimeError("plugin exploded")
'''


def test_broken_plugins_are_flagged_not_counted(trained_checkpoints, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text(textwrap.dedent(BROKEN_PLUGINS))
    summary = run_sweep({"smallcnn": str(trained_checkpoints["smallcnn"])},
                        ["test-over-budget", "test-nan", "test-raises", "fgsm"], [2 / 255], n=32,
                        out=tmp_path / "out", plugins=[plugins], progress=False, sanity_samples=0)
    by = summary.set_index("attack")
    assert by.loc["test-over-budget", "status"] == "invalid"
    assert "budget" in by.loc["test-over-budget", "message"]
    assert by.loc["test-nan", "status"] == "invalid"
    assert "finite" in by.loc["test-nan", "message"].lower() or "nan" in by.loc["test-nan", "message"].lower()
    assert by.loc["test-raises", "status"] == "failed"
    assert "plugin exploded" in by.loc["test-raises", "message"]
    assert by.loc["fgsm", "status"] == "ok"
    for bad in ("test-over-budget", "test-nan", "test-raises"):
        assert math.isnan(by.loc[bad, "robust_acc"])
    samples = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    assert set(samples["attack"]) == {"fgsm"}
    worst = summary[summary["attack"] == "worst-case"]
    assert worst["message"].str.contains("fgsm").all() and not worst["message"].str.contains("test-").any()


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(8, 10))

    def forward(self, x):
        return self.net(x)


def test_api_accepts_any_module_and_tensor_pairs(tmp_path):
    x = torch.rand(40, 3, 16, 16)
    y = torch.randint(0, 10, (40,))
    summary = run_sweep({"tiny": _TinyNet()}, ["fgsm"], [0.0, 0.1], data=(x, y), out=tmp_path, progress=False,
                        sanity_samples=8)
    assert set(summary["model"]) == {"tiny"}
    assert (summary[summary["attack"] == "fgsm"]["n"] == 40).all()


def test_bad_inputs_give_user_errors(trained_checkpoints, tmp_path):
    x = torch.rand(8, 3, 16, 16) * 255  # unnormalised 0..255 images: a classic mistake
    with pytest.raises(UserError, match=r"\[0,1\]"):
        run_sweep({"tiny": _TinyNet()}, ["fgsm"], [0.1], data=(x, torch.zeros(8, dtype=torch.long)),
                  out=tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="neither a checkpoint"):
        run_sweep({"m": "no/such/model.safetensors"}, ["fgsm"], [0.1], out=tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="unknown"):
        run_sweep({"m": str(trained_checkpoints["smallcnn"])}, ["no-such-attack"], [0.1], out=tmp_path / "c",
                  progress=False)
    with pytest.raises(UserError):
        run_sweep({"m": str(trained_checkpoints["smallcnn"])}, [{"name": "pgd-linf", "params": {"stepz": 3}}],
                  [0.1], out=tmp_path / "d", progress=False)


def test_report_from_the_real_sweep(small_sweep, tmp_path):
    """The report CLI on a real (small) sweep: a PDF with every section, numbers as in summary.parquet."""
    from PIL import Image
    from pypdf import PdfReader

    from robustbench_lta.cli import main
    from robustbench_lta.reporting.pdf import SECTIONS

    out, summary = small_sweep
    pdf = tmp_path / "real.pdf"
    main(["report", str(out), "--out", str(pdf)])  # returns normally on success (exit 0)
    reader = PdfReader(str(pdf))
    text = " ".join(" ".join(p.extract_text() or "" for p in reader.pages).split())
    assert len(reader.pages) >= len(SECTIONS)
    for i, name in enumerate(SECTIONS):
        assert f"{i + 1}. {name}" in text
    # the verdict quotes the worst-case robust accuracy at the largest eps, as the summary has it
    verdict = json.loads((tmp_path / "real_files" / "verdict.json").read_text())
    head = verdict["norms"]["linf"]["headline_eps"]
    assert head == pytest.approx(max(EPS))
    wc = summary[(summary["attack"] == "worst-case") & (summary["norm"] == "linf")]
    for r in wc[np.isclose(wc["eps"], head)].itertuples(index=False):
        assert f"{r.model} {r.robust_acc * 100:.1f}%" in text
    for r in summary[summary["attack"] != "worst-case"].drop_duplicates("model").itertuples(index=False):
        assert f"{r.model} {r.clean_acc * 100:.1f}%" in text  # clean accuracy, as in the summary
    pngs = sorted((tmp_path / "real_files").glob("*.png"))
    names = {p.name for p in pngs}
    assert "attention_maps_smallcnn_att2_concat_pc.png" in names and "attention_drift.png" in names
    assert any(n.startswith("robustness_curves") for n in names)
    for p in pngs:
        assert np.asarray(Image.open(p).convert("L"), dtype=float).std() > 5, f"{p.name} looks blank"


def test_channels_last_gives_the_same_results(trained_checkpoints, tmp_path):
    """NHWC weights (the default, faster on CPU) change only float rounding, not the answers."""
    kw = dict(n=64, batch_size=32, progress=False, sanity_samples=0, attention_samples=0)
    runs = {
        cl: run_sweep(_models(trained_checkpoints), ["fgsm", {"name": "pgd-linf", "params": {"steps": 3}}],
                      EPS, out=tmp_path / str(cl), channels_last=cl, **kw)
        for cl in (False, True)
    }
    cols = ["model", "attack", "eps", "clean_acc", "robust_acc", "status"]
    pd.testing.assert_frame_equal(runs[False][cols], runs[True][cols])
    with pytest.raises(UserError, match="executor ray"):
        run_sweep(_models(trained_checkpoints), ["fgsm"], EPS, out=tmp_path / "r", executor="ray", **kw)


def test_the_attention_figure_keeps_only_the_budgets_it_shows():
    eight = [k / 255 for k in range(0, 9)]
    assert figure_eps_indices(eight) == [1, 5, 8]  # smallest nonzero, middle, largest
    assert figure_eps_indices([0.0, 2 / 255, 8 / 255]) == [1, 2]
    assert figure_eps_indices([0.0]) == []
