"""Study v2 building blocks: compute (GMACs), matched baselines, seed families and their statistics,
attacks aimed at the attention, localisation vs saliency."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_lta.analysis.bootstrap import two_level_bootstrap, two_level_bootstrap_diff
from robustbench_lta.analysis.localisation import box_mask, localisation_table, pointing_game, topk_iou
from robustbench_lta.models import create_model
from robustbench_lta.models.compute import model_gmacs, registry_gmacs
from robustbench_lta.plugins import get_attack, verify_batch
from robustbench_lta.training.checkpoint import load_model, save_checkpoint


# ------------------------------------------------------------------------------------------ compute
def test_model_gmacs_counts_a_known_conv_and_leaves_the_model_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 64, 10))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # conv: 4 out x 3 in x 9 taps x 64 positions; linear: 256 x 10
    assert model_gmacs(net, (3, 8, 8)) == pytest.approx((4 * 3 * 9 * 64 + 256 * 10) / 1e9)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats untouched


def test_registry_gmacs_matches_a_real_forward_and_is_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = model_gmacs(create_model("vgg16_att3_concat_pc", width=0.25))
    assert registry_gmacs("vgg16_att3_concat_pc", width=0.25) == pytest.approx(real)
    cache = json.loads((tmp_path / "robustbench-lta" / "gmacs.json").read_text())
    assert any('"vgg16_att3_concat_pc"' in k for k in cache)


def test_attention_vgg_costs_12x_vgg16_and_matched_baselines_are_within_10_percent() -> None:
    names = ("vgg16", "vgg16_matched", "vgg16_matched_att2_gap", "vgg16_matched_att3_gap",
             "vgg16_att2_concat_pc", "vgg16_att3_concat_pc")
    g = {n: registry_gmacs(n) for n in names}
    assert g["vgg16_att3_concat_pc"] / g["vgg16"] > 10  # the compute confound (3.92 vs 0.31)
    for base, att in (("vgg16_matched", "vgg16_att2_concat_pc"), ("vgg16_matched", "vgg16_att3_concat_pc"),
                      ("vgg16_matched_att2_gap", "vgg16_att2_concat_pc"),
                      ("vgg16_matched_att3_gap", "vgg16_att3_concat_pc")):
        assert abs(g[base] / g[att] - 1) < 0.10, (base, att, g[base], g[att])


def test_resnet_attention_keeps_the_trunk_so_its_baseline_is_already_matched() -> None:
    # the ResNet attention variants read stage outputs of the unchanged trunk: no resolution change;
    # the extra compute is the attention branch itself (resnet164_att3: +10.3 %, the 1x1 projector of
    # the 32x32 stage-1 map), far from the VGG's 12x
    for base, att in (("resnet18", "resnet18_att2_concat_pc"), ("resnet164", "resnet164_att3_concat_pc")):
        shapes = lambda n: {k: v.shape for k, v in create_model(n, width=0.25).state_dict().items()  # noqa: E731
                            if k.startswith(("stem", "stages"))}
        assert shapes(base) == shapes(att)
        assert 1.0 < registry_gmacs(att) / registry_gmacs(base) < 1.15


def test_matched_baselines_run_without_attention() -> None:
    x = torch.rand(2, 3, 32, 32)
    for name in ("vgg16_matched", "vgg16_matched_att2_gap", "vgg16_matched_att3_gap"):
        m = create_model(name, width=0.125).eval()
        logits, maps = m(x, return_attention=True)
        assert logits.shape == (2, 10) and maps == [] and not m.has_attention


def test_models_cli_shows_gmacs(capsys) -> None:
    from robustbench_lta.cli import main

    main(["models", "vgg16_m*"])
    out = capsys.readouterr().out
    assert "GMACs" in out and "vgg16_matched_att3_gap" in out and "3.87" in out


def test_card_records_gmacs(tmp_path) -> None:
    m = create_model("smallcnn_att2_concat_pc", width=0.25)
    save_checkpoint(m, tmp_path / "m", {"input_size": [3, 32, 32]})
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["model"]["gmacs"] == pytest.approx(model_gmacs(m), rel=1e-4)
    assert card["model"]["gmacs_input_size"] == [3, 32, 32]


def test_compute_warning_when_models_differ_more_than_2x() -> None:
    from types import SimpleNamespace

    from robustbench_lta.reporting.compute import compute_lines, compute_warning

    def bundle(g: dict[str, float]) -> SimpleNamespace:
        models = {m: {"card": {"model": {"gmacs": v}}} for m, v in g.items()}
        return SimpleNamespace(models=list(g), model_folder={m: "run" for m in g},
                               manifests={"run": {"models": models}})

    text = compute_warning(bundle({"vgg16": 0.313, "att3": 3.92}))
    assert text is not None and "12.5x" in text
    assert compute_warning(bundle({"vgg16_matched": 3.79, "att3": 3.92})) is None
    assert "3.92 GMACs" in "\n".join(compute_lines(bundle({"vgg16": 0.313, "att3": 3.92})))


# ------------------------------------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def att_batch(trained_checkpoints, digits_test_data):
    model = load_model(trained_checkpoints["smallcnn_att2_concat_pc"]).eval()
    x = digits_test_data.images[:96].float() / 255
    y = digits_test_data.labels[:96]
    return model, x, y


def _pred(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("eps", [2 / 255, 6 / 255])
def test_pgd_attn_js_breaks_everything_pgd_breaks(att_batch, eps: float) -> None:
    model, x, y = att_batch
    pgd = get_attack("pgd-linf", seed=5, steps=5)(model, x, y, eps)
    ours = get_attack("pgd-attn-js", seed=5, steps=5)(model, x, y, eps)
    assert verify_batch(x, ours, eps, "linf", True).ok
    broken_pgd, broken_ours = _pred(model, pgd) != y, _pred(model, ours) != y
    assert bool((broken_pgd & ~broken_ours).sum() == 0)  # robust set of ours within PGD's
    assert int(broken_ours.sum()) >= int(broken_pgd.sum()) > 0


def test_attn_hijack_moves_attention_and_keeps_labels(att_batch) -> None:
    from robustbench_lta.analysis.attention import js_divergence

    model, x, y = att_batch
    eps = 8 / 255
    adv = get_attack("attn-hijack", steps=10)(model, x, y, eps)
    assert verify_batch(x, adv, eps, "linf", True).ok
    assert torch.equal(_pred(model, adv), _pred(model, x))  # the label never changes
    with torch.no_grad():
        _, clean_maps = model(x, return_attention=True)
        _, adv_maps = model(adv, return_attention=True)
        _, pgd_maps = model(get_attack("pgd-linf", steps=10)(model, x, y, eps), return_attention=True)
    hijack = js_divergence(clean_maps[-1], adv_maps[-1]).mean()
    assert hijack > 0.1 and hijack > js_divergence(clean_maps[-1], pgd_maps[-1]).mean()


@pytest.mark.parametrize("name", ["pgd-attn-js", "attn-hijack"])
def test_attention_attacks_refuse_models_without_attention(trained_checkpoints, name) -> None:
    from robustbench_lta.plugins import NotApplicable

    model = load_model(trained_checkpoints["smallcnn"]).eval()
    with pytest.raises(NotApplicable, match=f"{name} needs a model with attention maps"):
        get_attack(name)(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 2 / 255)


def test_attention_attacks_in_a_sweep_join_worst_case_and_skip_models_without_them(trained_checkpoints,
                                                                                   tmp_path) -> None:
    from robustbench_lta import run_sweep

    def sweep() -> pd.DataFrame:
        return run_sweep({"base": str(trained_checkpoints["smallcnn"]),
                          "att": str(trained_checkpoints["smallcnn_att2_concat_pc"])},
                         [{"name": "pgd-linf", "params": {"steps": 5}},
                          {"name": "pgd-attn-js", "params": {"steps": 5}},
                          {"name": "attn-hijack", "params": {"steps": 5}}],
                         eps=[0, 4 / 255], data="cluttered-digits", n=64, out=tmp_path / "res",
                         progress=False, sanity_samples=0)

    summary = sweep()
    # the whole cell, eps 0 included, is not-applicable with the attack's one line; not a failure
    base = summary[(summary["model"] == "base") & summary["attack"].isin(["pgd-attn-js", "attn-hijack"])]
    assert len(base) == 4 and set(base["status"]) == {"not-applicable"}
    assert base["message"].str.startswith(("pgd-attn-js needs a model with attention maps",
                                            "attn-hijack needs a model with attention maps")).all()
    assert set(summary[summary["model"] == "att"]["status"]) == {"ok"}
    manifest = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert manifest["counts"]["cells_failed"] == 0 and manifest["counts"]["cells_not_applicable"] == 4
    # a re-run keeps those units (failed ones would be retried)
    units = sorted((tmp_path / "res" / "units").glob("*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in units}
    sweep()
    assert {p: p.stat().st_mtime_ns for p in units} == stamps
    samples = pd.read_parquet(tmp_path / "res" / "samples.parquet")
    att = samples[(samples["model"] == "att") & (samples["eps"] > 0)]
    correct = att.groupby("index")["clean_pred"].first() == att.groupby("index")["label"].first()
    ok = set(correct[correct].index)
    pgd_robust = set(att[(att["attack"] == "pgd-linf") & ~att["broken"]]["index"]) & ok
    worst_robust = ok - set(att[att["broken"]]["index"])
    assert worst_robust <= pgd_robust
    row = summary[(summary["model"] == "att") & (summary["attack"] == "worst-case") & (summary["eps"] > 0)]
    assert row["robust_acc"].iloc[0] == pytest.approx(len(worst_robust) / 64)


# ------------------------------------------------------------------------------------------ families
def test_two_level_bootstrap_widens_with_seed_variance() -> None:
    rng = np.random.default_rng(0)
    same = (rng.random((3, 400)) < 0.6).astype(float)
    spread = np.stack([(rng.random(400) < p).astype(float) for p in (0.4, 0.6, 0.8)])
    a, b = two_level_bootstrap(same, replicates=500), two_level_bootstrap(spread, replicates=500)
    assert a.low < a.estimate < a.high and b.low < b.estimate < b.high
    assert (b.high - b.low) > 2 * (a.high - a.low)
    d = two_level_bootstrap_diff(same, same, replicates=500)
    assert d.estimate == 0 and d.low <= 0 <= d.high
    with pytest.raises(ValueError, match="same samples"):
        two_level_bootstrap_diff(same, spread[:, :10])


def test_three_seed_family_trained_swept_and_reported(tmp_path) -> None:
    from robustbench_lta.cli import main
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.reporting.family import family_curves, family_intervals, family_section
    from robustbench_lta.reporting.load import load_results, model_palette
    from robustbench_lta.training.family import train_family

    root = tmp_path / "fam"
    cfg = validate(TrainConfig, {
        "model": {"name": "smallcnn_att2_concat_pc", "width": 0.25},
        "data": {"name": "cluttered-digits", "n_train": 400, "n_test": 100},
        "augment": {"flip": False, "crop_padding": 0}, "epochs": 1, "batch_size": 32, "lr": 0.02,
        "seeds": [0, 1, 2], "out": str(root)})
    fam = train_family(cfg, progress=False)
    assert fam.seeds == [0, 1, 2] and len(fam.best_accs) == 3
    cards = [json.loads((root / f"seed{s}" / "best.json").read_text()) for s in (0, 1, 2)]
    assert [c["family"] for c in cards] == [{"name": "fam", "seed": s} for s in (0, 1, 2)]
    assert len({c["sha256"] for c in cards}) == 3  # three different networks
    out = tmp_path / "res"
    main(["sweep", "--model", str(root), "--attack", "fgsm", "--eps", "0,2,8", "--n", "60",
          "--out", str(out), "--quiet", "--set", "sanity_samples=0"])
    bundle = load_results([out])
    assert bundle.models == ["fam@seed0", "fam@seed1", "fam@seed2"]
    curves = family_curves(bundle)
    row = curves[(curves["attack"] == "fgsm") & (curves["eps"] > 0)].iloc[-1]
    assert row["seeds"] == 3 and row["min"] <= row["mean"] <= row["max"] and np.isfinite(row["std"])
    iv = family_intervals(bundle, replicates=200)
    assert {"fgsm", "worst-case"} <= set(iv["attack"]) and (iv["low"] <= iv["high"]).all()
    from matplotlib.backends.backend_pdf import PdfPages

    from robustbench_lta.reporting.pages import PageSink

    with PdfPages(tmp_path / "f.pdf") as pdf:
        sink = PageSink(pdf=pdf, png_dir=tmp_path)
        assert family_section(sink, bundle, model_palette(bundle.models), "Seeds") is not None
    assert (tmp_path / "family_curves.png").is_file()
    # the Python API expands a family folder the same way, to the same rows
    from robustbench_lta.engine.api import run_sweep

    api = run_sweep({"fam": str(root)}, ["fgsm"], [0, 2 / 255, 8 / 255], n=60, out=tmp_path / "api",
                    progress=False, sanity_samples=0)
    cli = pd.read_parquet(out / "summary.parquet")
    cols = ["model", "attack", "eps", "robust_acc"]
    pd.testing.assert_frame_equal(api[cols].sort_values(cols[:3]).reset_index(drop=True),
                                  cli[cols].sort_values(cols[:3]).reset_index(drop=True))


def test_train_cli_seeds_flag_rejects_garbage(tmp_path, capsys) -> None:
    from robustbench_lta.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: smallcnn}\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(cfg), "--seeds", "0,x"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- localisation
def test_pointing_game_and_topk_iou_on_constructed_maps() -> None:
    boxes = torch.tensor([[2, 2, 6, 6], [0, 0, 4, 4]])
    maps = torch.zeros(2, 8, 8)
    maps[0, 3, 3] = 1  # inside box 0
    maps[1, 7, 7] = 1  # outside box 1
    assert pointing_game(maps, boxes).tolist() == [1.0, 0.0]
    assert box_mask(boxes, (8, 8)).sum(dim=(1, 2)).tolist() == [16, 16]
    exact = box_mask(boxes, (8, 8)).float()
    assert topk_iou(exact, boxes, top_fraction=16 / 64).tolist() == [1.0, 1.0]


def test_localisation_table_on_tiny_models(trained_checkpoints, digits_test_data) -> None:
    models = {k: load_model(v).eval() for k, v in trained_checkpoints.items()}
    x = digits_test_data.images[:16].float() / 255
    table = localisation_table(models, x, digits_test_data.labels[:16], digits_test_data.boxes[:16],
                               fgsm_eps=[4 / 255], smoothgrad_samples=2)
    att = table[table["model"] == "smallcnn_att2_concat_pc"]
    assert set(att["method"]) == {"attention-l1", "attention-l2", "gradient", "smoothgrad"}
    assert set(table[table["model"] == "smallcnn"]["method"]) == {"gradient", "smoothgrad"}
    assert set(table["condition"]) == {"clean", "fgsm"}
    assert table[["pointing", "iou"]].apply(lambda c: c.between(0, 1).all()).all()
    assert (table["n"] == 16).all()


class _MixedOps(nn.Module):
    """Every op the MAC counter knows: grouped and transposed convs, linear, matmul, bmm, einsum, SDPA."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.up(self.grouped(self.conv(x)))  # (N,4,16,16)
        t = f.flatten(2)  # (N,4,256)
        a = t @ t.transpose(1, 2)  # (N,4,4)
        b = torch.bmm(a, t)  # (N,4,256)
        c = torch.einsum("nij,njk->nik", a, b)
        q = c.view(c.shape[0], 1, 4, 256)
        s = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return self.fc(s.flatten(1)[:, :64])


def test_mac_counter_agrees_with_torch_flop_counter_on_every_registered_model_and_mixed_ops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from robustbench_lta.models.registry import list_models, model_info

    def reference(m: nn.Module) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as c:
            m.eval()
            m(torch.zeros(1, 3, 8, 8, device=next(m.parameters()).device))
        return c.get_total_flops() / 2e9

    builtin = [n for n in list_models() if model_info(n).source == "builtin"]  # not other tests' models
    assert len(builtin) >= 20
    for name in builtin:
        with torch.device("meta"):
            m = create_model(name, num_classes=10, width=0.0625)
        with torch.no_grad(), FlopCounterMode(display=False) as c:
            m(torch.zeros(1, 3, 32, 32, device="meta"))
        assert model_gmacs(m, (3, 32, 32)) == pytest.approx(c.get_total_flops() / 2e9, rel=1e-9), name
    # by hand: conv 512 outputs x 27, grouped 512 x 18, transposed 512 inputs x 16, matmul/bmm/einsum
    # 4096 each, SDPA 2 x 4x4x256, linear 64 x 10. (torch's counter skips CPU SDPA: 8192 fewer.)
    expected = 512 * 27 + 512 * 18 + 512 * 16 + 3 * 4096 + 2 * 4096 + 640
    mixed = _MixedOps()
    assert model_gmacs(mixed, (3, 8, 8)) == pytest.approx(expected / 1e9, rel=1e-9)
    assert reference(mixed) == pytest.approx((expected - 8192) / 1e9, rel=1e-9)
