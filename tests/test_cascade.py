"""Cascade accounting: cheapest attacks first, each later one only on what the earlier ones left."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta import run_sweep
from robustbench_lta.config import SweepConfig, validate
from robustbench_lta.engine.plan import build_attack_plans, cascade_order, plan_cells

EPS = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
# deterministic attacks (no random start): the cascade's worst case must equal the full mode's exactly
ATTACKS = [
    {"name": "pgd-linf", "label": "pgd5", "params": {"steps": 5, "random_start": False}},
    {"name": "fgsm"},
    {"name": "apgd-ce", "params": {"steps": 5}, "eps": [2 / 255, 8 / 255]},
]


def _sweep(ckpt, out, accounting: str, n: int = 96, attacks=ATTACKS, shard_size=None) -> pd.DataFrame:
    kw = {"shard_size": shard_size} if shard_size else {}
    return run_sweep({"m": str(ckpt)}, attacks, EPS, data="cluttered-digits", n=n, out=out, progress=False,
                     sanity_samples=0, attention_samples=0, accounting=accounting, batch_size=32, **kw)


def test_cascade_orders_cheapest_first_and_keys_depend_on_upstream() -> None:
    cfg = validate(SweepConfig, {"models": [{"name": "m", "source": "smallcnn"}], "attacks": [
        {"name": "square", "params": {"n_queries": 5}}, {"name": "pgd-linf"}, {"name": "fgsm"},
        {"name": "deepfool"}, {"name": "pgd-l2", "eps": [0.5]}], "eps": [8 / 255]}, "test")
    plans = build_attack_plans(cfg)
    assert [a.label for a in cascade_order(plans)] == ["fgsm", "pgd-linf", "pgd-l2", "square", "deepfool"]
    cells = {c.attack.label: c for c in plan_cells([("m", {"sha256": "x"})], {"d": 1}, plans, 0, "cascade")}
    assert [u.attack.label for u in cells["square"].upstream] == ["fgsm", "pgd-linf"]  # same norm only
    assert cells["fgsm"].upstream == () and cells["deepfool"].upstream == ()  # unbounded: no cascade
    assert [u.attack.label for u in cells["pgd-l2"].upstream] == []
    # another upstream attack changes a downstream key, not the first attack's
    other = build_attack_plans(cfg.model_copy(update={"attacks": [cfg.attacks[0], cfg.attacks[2]]}))
    cells2 = {c.attack.label: c for c in plan_cells([("m", {"sha256": "x"})], {"d": 1}, other, 0, "cascade")}
    assert cells2["fgsm"].key == cells["fgsm"].key and cells2["square"].key != cells["square"].key


def test_cascade_worst_case_equals_full_mode_and_rows_say_what_was_skipped(trained_checkpoints, tmp_path):
    ckpt = trained_checkpoints["smallcnn"]
    full = _sweep(ckpt, tmp_path / "full", "worst-case")
    casc = _sweep(ckpt, tmp_path / "casc", "cascade")
    key = ["attack", "eps"]
    wf = full[full["attack"] == "worst-case"].sort_values(key)["robust_acc"].to_numpy()
    wc = casc[casc["attack"] == "worst-case"].sort_values(key)["robust_acc"].to_numpy()
    np.testing.assert_array_equal(wf, wc)
    # per-sample worst case identical too
    sf = pd.read_parquet(tmp_path / "full" / "samples.parquet")
    sc = pd.read_parquet(tmp_path / "casc" / "samples.parquet")

    def broken_any(s: pd.DataFrame) -> pd.Series:
        return s.groupby(["eps", "index"])["broken"].any()

    pd.testing.assert_series_equal(broken_any(sf[sf["eps"].isin([2 / 255, 8 / 255])]),
                                   broken_any(sc[sc["eps"].isin([2 / 255, 8 / 255])]))
    # FGSM runs first: its rows are the full mode's; PGD skipped exactly what FGSM had broken
    fg = casc[(casc["attack"] == "fgsm")].set_index("eps")
    assert (fg["skipped"] == 0).all()
    full_fgsm = full[full["attack"] == "fgsm"].set_index("eps")["robust_acc"]
    pd.testing.assert_series_equal(fg["robust_acc"], full_fgsm)
    pgd = sc[(sc["attack"] == "pgd5") & (sc["eps"] > 0)]
    correct = sc["clean_pred"] == sc["label"]
    fgsm_broken = sc[(sc["attack"] == "fgsm") & sc["broken"] & correct]
    first_broken = fgsm_broken.groupby("index")["eps"].min()
    own_hit = pgd["broken"] & (pgd["clean_pred"] == pgd["label"]) & (pgd["skipped_by"] == "")
    own = pgd[own_hit].groupby("index")["eps"].min()
    for eps, part in pgd.groupby("eps"):
        skipped = set(part[part["skipped_by"] == "fgsm"]["index"])
        expected = set(first_broken[first_broken <= eps + 1e-9].index)
        # PGD skips what FGSM broke at this budget or below, unless PGD itself broke it at a smaller one
        assert skipped == expected - set(own[own < eps - 1e-9].index) and skipped
        assert not part[part["skipped_by"] != ""]["attacked"].any()
        assert part[part["skipped_by"] != ""]["broken"].all()
    row = casc[(casc["attack"] == "pgd5") & (casc["eps"] == 8 / 255)].iloc[0]
    assert row["skipped"] > 0 and row["message"].startswith("cascade:") and "fgsm" in row["message"]
    # APGD, after both: fed by FGSM and PGD
    ap = sc[(sc["attack"] == "apgd-ce")]
    assert set(ap["skipped_by"]) - {""} <= {"fgsm", "pgd5"} and (ap["skipped_by"] != "").any()
    # fewer attack calls in the cascade
    work = lambda s: s[s["attack"] != "worst-case"]["backward"].sum()  # noqa: E731
    assert work(casc) < work(full)
    # a vacuous comparison (PGD fed by FGSM) is not reported as a pass
    sanity = pd.read_parquet(tmp_path / "casc" / "sanity.parquet")
    assert sanity[sanity["check"] == "iterative-at-least-single-step"].empty


def test_cascade_resumes_with_another_shard_size(trained_checkpoints, tmp_path) -> None:
    ckpt = trained_checkpoints["smallcnn"]
    first = _sweep(ckpt, tmp_path / "r", "cascade", n=64, shard_size=32)
    again = _sweep(ckpt, tmp_path / "r", "cascade", n=64, shard_size=64)
    cols = ["attack", "eps", "robust_acc", "skipped"]
    pd.testing.assert_frame_equal(first[cols].sort_values(cols[:2]).reset_index(drop=True),
                                  again[cols].sort_values(cols[:2]).reset_index(drop=True))
    assert again["seconds"].sum() == pytest.approx(first["seconds"].sum())  # nothing recomputed


def test_cascade_report_separates_cascade_rows_from_each_attacks_own(trained_checkpoints, tmp_path) -> None:
    from robustbench_lta.reporting.load import CASCADE_SUFFIX, load_results
    from robustbench_lta.reporting.pdf import build_report

    out = tmp_path / "casc"
    summary = _sweep(trained_checkpoints["smallcnn_att2_concat_pc"], out, "cascade", n=64)
    bundle = load_results([out])
    shown = set(bundle.summary["attack"])
    assert f"pgd5{CASCADE_SUFFIX}" in shown and "fgsm" in shown and f"fgsm{CASCADE_SUFFIX}" not in shown
    # the attack's own rows keep only budgets where it skipped nothing
    own = bundle.summary[bundle.summary["attack"] == "pgd5"]
    assert set(own["eps"]) == set(summary[(summary["attack"] == "pgd5") & (summary["skipped"] == 0)]["eps"])
    # the worst case the report recomputes per sample is the engine's
    from robustbench_lta.reporting.load import worst_case_per_sample

    grid = sorted(set(bundle.summary["eps"]))
    wc = worst_case_per_sample(bundle.summary, bundle.samples, "m", "linf", grid)
    engine = summary[summary["attack"] == "worst-case"].set_index("eps")["robust_acc"]
    for eps in grid:
        assert wc[eps].mean() == pytest.approx(engine[eps])
    report = build_report([out], tmp_path / "r.pdf")
    assert report.pdf.is_file() and any(CASCADE_SUFFIX in m for m in bundle.missing)


class _CountingDigits(torch.utils.data.Dataset):
    """A lazy map-style dataset that counts how often each image is decoded."""

    def __init__(self, n: int) -> None:
        from robustbench_lta.data.registry import load_dataset

        super().__init__()
        ds = load_dataset("cluttered-digits", split="test", n=n)
        self.x, self.y, self.classes = ds.images, ds.labels, ds.classes
        self.reads = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i].float() / 255, int(self.y[i])


def test_a_streamed_shard_is_decoded_once_per_unit_not_per_budget(trained_checkpoints, tmp_path) -> None:
    reads = {}
    for eps in ([8 / 255], [1 / 255, 2 / 255, 4 / 255, 8 / 255]):
        data = _CountingDigits(128)
        run_sweep({"m": str(trained_checkpoints["smallcnn"])}, [{"name": "pgd-linf", "params": {"steps": 2}}],
                  eps, data=data, n=128, out=tmp_path / f"r{len(eps)}", progress=False, sanity_samples=0,
                  attention_samples=0, batch_size=32, shard_size=64)
        reads[len(eps)] = data.reads
    # fingerprint probes + one decode per sample (two units of 64); the budgets add nothing
    assert reads[4] == reads[1] and reads[1] <= 128 + 40
