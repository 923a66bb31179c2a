"""Reporting: a PDF report from a synthetic but realistic results folder (the engine's schema, see
docs/architecture.md "Results folder"), the verdict's numbers, partial results, several runs.

The folder is fabricated here, not swept, so these tests need no model and run in seconds: a
baseline ``vgg16`` and an attention model ``vgg16_att3_concat_pc`` (three levels of maps, 32x32,
16x16 and 8x8 on 32x32 images with object boxes), attacks fgsm and pgd-linf at eps 0,1,2,4,8 /255,
the unbounded cw-l2, and the per-norm worst-case rows. Each sample has a hidden robustness radius;
the attention model's radii are twice the baseline's, so it is clearly the more robust one.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_lta.errors import UserError
from robustbench_lta.reporting.load import EPS_TOL, load_results
from robustbench_lta.reporting.pdf import SECTIONS, build_report
from robustbench_lta.reporting.stats import newcombe_diff, paired_diff_ci
from robustbench_lta.reporting.verdict import compute_verdict

BASE, ATT = "vgg16", "vgg16_att3_concat_pc"
EPS = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N, K, IMG = 240, 4, 32
LEVEL_SIZES = [32, 16, 8]


def _summary_row(model: str, attack: str, norm: str, eps: float, g: pd.DataFrame, seconds: float) -> dict:
    correct = (g["clean_pred"] == g["label"]).to_numpy()
    broken = g["broken"].to_numpy(bool)
    fooled = correct & broken
    norms = g["norm"].to_numpy(float)[fooled]
    return {
        "model": model,
        "dataset": "cluttered-digits",
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "n": len(g),
        "clean_acc": correct.mean(),
        "robust_acc": (correct & ~broken).mean(),
        "attack_success_rate": fooled.sum() / max(correct.sum(), 1),
        "mean_norm": norms.mean() if len(norms) else np.nan,
        "median_norm": np.median(norms) if len(norms) else np.nan,
        "max_norm": norms.max() if len(norms) else np.nan,
        "seconds": seconds,
        "status": "ok",
        "message": "",
    }


def _maps(rng: np.random.Generator, k: int, size: int, centre: np.ndarray, spread: float) -> np.ndarray:
    """k softmax-like maps peaked at ``centre`` (pixel coords on the 32x32 image), summing to 1."""
    ys, xs = np.mgrid[0:size, 0:size] * (IMG / size) + IMG / size / 2
    d2 = (ys[None] - centre[:, 1, None, None]) ** 2 + (xs[None] - centre[:, 0, None, None]) ** 2
    m = np.exp(-d2 / (2 * spread**2)) + 0.02 * rng.random((k, size, size))
    return (m / m.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def make_results(folder: Path, seed: int = 0, models: tuple[str, ...] = (BASE, ATT)) -> Path:
    """Write a complete results folder as the engine would, for ``models`` (a subset of BASE/ATT)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = rng.integers(0, 10, N)
    boxes = np.stack([rng.integers(0, 12, N), rng.integers(0, 12, N)], 1).astype(np.float32)
    boxes = np.concatenate([boxes, boxes + 16], 1)
    samples, summary, att_rows = [], [], []
    truth = {BASE: (0.80, 3 / 255), ATT: (0.86, 9 / 255)}  # clean accuracy, mean robustness radius
    for model in models:
        acc, radius = truth[model]
        clean_pred = np.where(rng.random(N) < acc, labels, (labels + 1) % 10)
        r = rng.exponential(radius, N)  # PGD breaks a sample at eps >= r; FGSM only at 1.5 r
        wrong = (labels + 1 + rng.integers(0, 8, N)) % 10
        for attack, mult in (("fgsm", 1.5), ("pgd-linf", 1.0)):
            for eps in EPS:
                broken = (clean_pred != labels) | (r * mult <= eps + 1e-9)
                attacked = (clean_pred == labels) & ~((r * mult) <= eps - 1 / 255 + 1e-9)
                adv = np.where(broken & (clean_pred == labels), wrong, clean_pred)
                samples.append(
                    pd.DataFrame(
                        {
                            "model": model,
                            "attack": attack,
                            "eps": eps,
                            "index": np.arange(N),
                            "label": labels,
                            "clean_pred": clean_pred,
                            "adv_pred": adv,
                            "norm": np.where(broken, eps, 0.0),
                            "attacked": attacked,
                            "broken": broken,
                        }
                    )
                )
        # unbounded L2 attack: finds an adversarial example for nearly every clean-correct sample
        found = rng.random(N) < 0.97
        l2 = 8 * r + rng.exponential(0.05, N)  # L2 norms on [0,1] images
        broken = (clean_pred != labels) | found
        samples.append(
            pd.DataFrame(
                {
                    "model": model,
                    "attack": "cw-l2",
                    "eps": math.inf,
                    "index": np.arange(N),
                    "label": labels,
                    "clean_pred": clean_pred,
                    "adv_pred": np.where(broken & (clean_pred == labels), wrong, clean_pred),
                    "norm": np.where(found & (clean_pred == labels), l2, 0.0),
                    "attacked": clean_pred == labels,
                    "broken": broken,
                }
            )
        )
        for g in samples[-11:]:
            attack, eps = g["attack"].iloc[0], float(g["eps"].iloc[0])
            norm = "l2" if attack == "cw-l2" else "linf"
            summary.append(_summary_row(model, attack, norm, eps, g, 0.5 + 10 * min(eps, 0.1) + rng.random()))
        # worst case over the linf attacks (the unbounded cw-l2 is the only l2 attack: no grid)
        for eps in EPS:
            broken = (clean_pred != labels) | (r <= eps + 1e-9) | (1.5 * r <= eps + 1e-9)
            g = pd.DataFrame({"label": labels, "clean_pred": clean_pred, "broken": broken, "norm": np.nan})
            row = _summary_row(model, "worst-case", "linf", eps, g, 1.0 + 20 * eps)
            row["message"] = "min over fgsm, pgd-linf"
            summary.append(row)
        if model == ATT:
            for attack, mult in (("fgsm", 1.5), ("pgd-linf", 1.0)):
                for eps in EPS:
                    for lev in range(3):
                        js = np.clip(eps * 255 / 8 * (0.05 + 0.1 * lev) * rng.random(N) * 2 / mult, 0, 1)
                        bm = rng.uniform(0.4, 0.7, N)
                        att_rows.append(
                            pd.DataFrame(
                                {
                                    "model": model,
                                    "attack": attack,
                                    "eps": eps,
                                    "index": np.arange(N),
                                    "level": lev,
                                    "js_divergence": js.astype(np.float32),
                                    "box_mass_clean": bm.astype(np.float32),
                                    "box_mass_adv": (bm * (1 - 0.5 * eps * 255 / 8)).astype(np.float32),
                                }
                            )
                        )
            idx = np.arange(K)
            centre = boxes[idx, :2] + 8
            images = rng.random((K, 3, IMG, IMG)).astype(np.float32) * 0.3
            for i in idx:
                x0, y0 = boxes[i, :2].astype(int)
                images[i, :, y0 : y0 + 16, x0 : x0 + 16] += 0.6
            adv_images = np.clip(
                images[None]
                + rng.uniform(-1, 1, (len(EPS), K, 3, IMG, IMG)).astype(np.float32)
                * np.asarray(EPS, np.float32)[:, None, None, None, None],
                0,
                1,
            )
            npz = {
                "index": idx,
                "labels": labels[idx],
                "images": images,
                "attack": np.array("pgd-linf"),
                "eps": np.asarray(EPS),
                "adv_images": adv_images,
                "clean_pred": clean_pred[idx],
                "adv_pred": np.stack([np.where(r[idx] <= e, wrong[idx], clean_pred[idx]) for e in EPS]),
                "boxes": boxes[idx],
            }
            for j, size in enumerate(LEVEL_SIZES):
                npz[f"clean_level{j}"] = _maps(rng, K, size, centre, 4.0 + 2 * j)
                npz[f"adv_level{j}"] = np.stack(
                    [_maps(rng, K, size, centre + 40 * e, 4.0 + 2 * j + 300 * e) for e in EPS]
                )
            (folder / "attention").mkdir()
            np.savez(folder / "attention" / f"{model}.npz", **npz)
    samples_df = pd.concat(samples, ignore_index=True)
    samples_df.to_parquet(folder / "samples.parquet")
    summary_df = pd.DataFrame(summary)
    summary_df.to_parquet(folder / "summary.parquet")
    summary_df.to_csv(folder / "summary.csv", index=False)
    sanity = []
    for model in models:
        sanity += [
            {
                "check": "deterministic",
                "model": model,
                "attack": None,
                "eps": np.nan,
                "status": "pass",
                "value": 0.0,
                "message": "two forwards of the same batch agree",
            },
            {
                "check": "iterative-at-least-single-step",
                "model": model,
                "attack": "fgsm vs pgd-linf",
                "eps": 4 / 255,
                "status": "pass",
                "value": 0.0,
                "message": "fgsm breaks no sample that pgd-linf misses at eps 4/255",
            },
            {
                "check": "near-chance-at-large-eps",
                "model": model,
                "attack": "pgd-linf",
                "eps": 128 / 255,
                "status": "warn" if model == ATT else "pass",
                "value": 0.2 if model == ATT else 0.0,
                "message": "accuracy 20.0% under PGD at eps 128/255 (above chance 10%)"
                if model == ATT
                else "accuracy 0.0% under PGD at eps 128/255 (at or below chance)",
            },
        ]
    sanity.append(
        {
            "check": "monotone-in-eps",
            "model": BASE,
            "attack": "fgsm",
            "eps": np.nan,
            "status": "fail",
            "value": 0.02,
            "message": "robust accuracy rises from 40.0% to 42.0% between 2/255 and 4/255",
        }
    )
    pd.DataFrame(sanity).to_parquet(folder / "sanity.parquet")
    if att_rows:
        pd.concat(att_rows, ignore_index=True).to_parquet(folder / "attention.parquet")
    manifest = {
        "format": 1,
        "seed": seed,
        "device": "cpu (x86_64, 2 threads)",
        "git_commit": "0123456789abcdef" * 2,
        "started": "2026-11-24T10:00:00+00:00",
        "finished": "2026-11-24T10:05:00+00:00",
        "versions": {"robustbench-lta": "0.1.0", "torch": "2.14.1", "python": "3.11.7"},
        "config": {
            "accounting": "worst-case",
            "models": [{"name": m, "source": f"checkpoints/{m}"} for m in models],
            "attacks": [
                {"name": "fgsm"},
                {"name": "pgd-linf", "params": {"steps": 10}},
                {"name": "cw-l2", "params": {"steps": 50}},
            ],
            "eps": [0, 1, 2, 4, 8],
            "eps_scale": 255,
            "n": N,
        },
        "eps": EPS,
        "dataset": {"name": "cluttered-digits", "n": N, "classes": CLASSES, "has_boxes": True},
        "models": {
            m: {
                "source": f"checkpoints/{m}/best.safetensors",
                "sha256": "ab" * 32,
                "has_attention": m == ATT,
                "card": {},
            }
            for m in models
        },
        "attacks": {
            "fgsm": {"norm": "linf", "kind": "white-box", "bounded": True, "params": {}, "eps": EPS},
            "pgd-linf": {
                "norm": "linf",
                "kind": "white-box",
                "bounded": True,
                "params": {"steps": 10},
                "eps": EPS,
            },
            "cw-l2": {
                "norm": "l2",
                "kind": "white-box",
                "bounded": False,
                "params": {"steps": 50},
                "eps": EPS,
            },
        },
        "counts": {"cells_run": len(summary_df), "cells_failed": 0, "cells_invalid": 0, "cells_reused": 0},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("synthetic") / "run")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _pdf_text(path: Path) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    text = "\n".join(p.extract_text() or "" for p in reader.pages)
    return len(reader.pages), " ".join(text.split())  # line wrapping must not hide a phrase


def _check_pngs(pngs: list[Path]) -> None:
    from PIL import Image

    assert pngs
    for p in pngs:
        arr = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert arr.std() > 5, f"{p.name} looks blank"


def test_full_report(results_dir: Path, tmp_path: Path) -> None:
    res = build_report([results_dir], tmp_path / "rep.pdf", title="Test report")
    assert res.pdf.is_file() and res.sections == SECTIONS
    pages, text = _pdf_text(res.pdf)
    assert pages >= len(SECTIONS) and res.pages == pages
    for i, name in enumerate(SECTIONS):
        assert f"{i + 1}. {name}" in text
    for word in (
        "VERDICT",
        BASE,
        ATT,
        "cluttered-digits",
        "0123456789ab",
        "cpu (x86_64",
        "torch 2.14.1",
        "cw-l2",
        "possible gradient masking",
        "monotone-in-eps",
        "truck",
    ):
        assert word in text, word
    _check_pngs(res.pngs)
    names = {p.name for p in res.pngs}
    assert any(n.startswith("robustness_curves") for n in names)
    assert f"attention_maps_{ATT}.png" in names and "attention_drift.png" in names
    assert "per_class_robust_accuracy.png" in names
    assert all(p.parent == tmp_path / "rep_files" for p in res.pngs + res.tables)
    assert not res.warnings
    # CSV tables agree with summary.parquet
    summary = pd.read_parquet(results_dir / "summary.parquet")
    robust = pd.read_csv(tmp_path / "rep_files" / "robust_accuracy.csv")
    for r in summary[np.isfinite(summary["eps"])].itertuples(index=False):
        row = robust[
            (robust["attack"] == r.attack)
            & (robust["model"] == r.model)
            & (np.abs(robust["eps_01"] - r.eps) < EPS_TOL)
        ]
        assert len(row) == 1
        assert row["robust_acc_%"].iloc[0] == pytest.approx(100 * r.robust_acc, abs=1e-3)
        assert row["ci_lo_%"].iloc[0] <= row["robust_acc_%"].iloc[0] <= row["ci_hi_%"].iloc[0]
    clean = pd.read_csv(tmp_path / "rep_files" / "clean_accuracy.csv").set_index("model")
    for m, g in summary.groupby("model"):
        assert clean.loc[m, "clean_acc_%"] == pytest.approx(100 * g["clean_acc"].iloc[0], abs=0.01)
    unb = pd.read_csv(tmp_path / "rep_files" / "unbounded_attacks.csv")
    df = summary[summary["attack"] == "cw-l2"].set_index("model")
    assert set(unb["model"]) == {BASE, ATT}
    for r in unb.itertuples(index=False):
        assert r.median_norm == pytest.approx(df.loc[r.model, "median_norm"], rel=1e-6)
    assert (tmp_path / "rep_files" / "sanity_checks.md").read_text().startswith("| check |")
    drift = pd.read_csv(tmp_path / "rep_files" / "attention_drift.csv")
    assert set(drift["level"]) == {0, 1, 2}
    # JS divergence grows with eps in the fabricated data, and the table follows
    pgd0 = drift[(drift["attack"] == "pgd-linf") & (drift["level"] == 2)].sort_values("eps")
    assert pgd0["js_mean"].iloc[0] == 0 and pgd0["js_mean"].is_monotonic_increasing


def test_verdict_names_more_robust_model(results_dir: Path) -> None:
    v = compute_verdict(load_results([results_dir]))
    summary = pd.read_parquet(results_dir / "summary.parquet")
    linf = v["norms"]["linf"]
    assert linf["headline_eps"] == pytest.approx(8 / 255)
    wc = summary[(summary["attack"] == "worst-case") & (summary["norm"] == "linf")]
    for r in wc.itertuples(index=False):
        assert linf["robust_acc"][r.model][r.eps] == pytest.approx(r.robust_acc)
    for c in linf["comparisons"]:
        assert c["diff"] == pytest.approx(c["acc_a"] - c["acc_b"])
        lo, hi = c["ci"]
        assert lo <= c["diff"] + 1e-9 and c["diff"] - 1e-9 <= hi
        assert c["method"] == "paired" and c["test"] == "exact McNemar" and c["n"] == N
    head = next(c for c in linf["comparisons"] if abs(c["eps"] - 8 / 255) < EPS_TOL)
    assert head["significant"] and head["better"] == ATT
    at8 = wc[np.abs(wc["eps"] - 8 / 255) < EPS_TOL].set_index("model")["robust_acc"]
    assert head["diff"] == pytest.approx(at8[BASE] - at8[ATT])
    gap = f"{abs(head['diff']) * 100:.1f} pp"
    assert f"At 8/255, {ATT} is more robust than {BASE} by {gap}" in v["text"]
    for m, g in summary.groupby("model"):
        assert v["clean"][m] == pytest.approx(g["clean_acc"].iloc[0])
    assert "Clean accuracy:" in v["text"]
    # the unbounded attack: the attention model needs larger L2 perturbations (radii twice as large)
    cw = v["unbounded"]["cw-l2"]
    assert cw["median_norm"][ATT] > cw["median_norm"][BASE]
    assert cw["comparisons"][0]["better"] == ATT and cw["comparisons"][0]["ci"][1] < 0
    assert f"{ATT} needs larger perturbations than {BASE}" in v["text"]


def test_verdict_without_samples_uses_newcombe(results_dir: Path, tmp_path: Path) -> None:
    folder = _copy(results_dir, tmp_path / "nosamples")
    (folder / "samples.parquet").unlink()
    res = build_report([folder], tmp_path / "r.pdf")
    comp = next(c for c in res.verdict["norms"]["linf"]["comparisons"] if abs(c["eps"] - 8 / 255) < EPS_TOL)
    assert comp["method"] == "unpaired" and comp["significant"] and comp["better"] == ATT
    assert any("samples.parquet" in w for w in res.warnings)
    _, text = _pdf_text(res.pdf)
    assert "more robust than" in text
    assert "Per-class robust accuracy needs per-sample results" in text


def test_no_significant_difference_when_equal(results_dir: Path, tmp_path: Path) -> None:
    """Two models with identical per-sample results: the verdict must not call a winner."""
    folder = _copy(results_dir, tmp_path / "tie")
    for name in ("summary", "samples"):
        df = pd.read_parquet(folder / f"{name}.parquet")
        base = df[df["model"] == BASE]
        df = pd.concat([base, base.assign(model="vgg16_copy")], ignore_index=True)
        df.to_parquet(folder / f"{name}.parquet")
    v = compute_verdict(load_results([folder]))
    assert all(not c["significant"] for c in v["norms"]["linf"]["comparisons"])
    assert "no significant difference between vgg16 and vgg16_copy" in v["text"]


def test_partial_results_render(results_dir: Path, tmp_path: Path) -> None:
    folder = _copy(results_dir, tmp_path / "partial")
    s = pd.read_parquet(folder / "summary.parquet")
    hit = (s["model"] == BASE) & (s["attack"] == "pgd-linf") & (np.abs(s["eps"] - 2 / 255) < EPS_TOL)
    s.loc[hit, ["status", "message"]] = ["failed", "RuntimeError: simulated failure"]
    s.loc[hit, "robust_acc"] = np.nan
    inv = (s["model"] == ATT) & (s["attack"] == "cw-l2")
    s.loc[inv, ["status", "message"]] = ["invalid", "perturbation outside [0,1] in batch 0"]
    na = (s["model"] == BASE) & (s["attack"] == "cw-l2")  # an attack that cannot attack this model
    s.loc[na, ["status", "message"]] = ["not-applicable", "cw-l2 needs simulated maps"]
    s.loc[na, "robust_acc"] = np.nan
    s = s[~((s["model"] == ATT) & (s["attack"] == "fgsm") & (s["eps"] > 0.02))]  # a dropped row
    s.to_parquet(folder / "summary.parquet")
    shutil.rmtree(folder / "attention")
    (folder / "sanity.parquet").unlink()
    res = build_report([folder], tmp_path / "p.pdf")
    pages, text = _pdf_text(res.pdf)
    assert pages >= len(SECTIONS) and "FAILED" in text and "simulated failure" in text and "INVALID" in text
    assert any("failed" in w for w in res.warnings)
    assert any("no stored maps" in w for w in res.warnings)
    assert "No sanity checks" in text
    _check_pngs(res.pngs)
    bad = pd.read_csv(tmp_path / "p_files" / "cells_not_ok.csv")
    assert sorted(bad["status"]) == ["failed", "invalid"]  # not-applicable is a note, not a problem
    first = " ".join(text.split("2. Robustness curves")[0].split())
    assert f"cw-l2 does not apply to {BASE} (not-applicable, not retried)" in first


def test_one_model_no_attention_single_eps(tmp_path: Path) -> None:
    folder = make_results(tmp_path / "one", models=(BASE,))
    for name in ("summary", "samples"):
        df = pd.read_parquet(folder / f"{name}.parquet")
        df = df[~np.isfinite(df["eps"]) | (np.abs(df["eps"] - 8 / 255) < EPS_TOL)]
        df.to_parquet(folder / f"{name}.parquet")
    res = build_report([folder], tmp_path / "o.pdf")
    pages, text = _pdf_text(res.pdf)
    assert pages >= len(SECTIONS)
    assert "No attention models in these results" in text
    assert "nothing to compare" in text
    assert res.verdict["models"] == [BASE]
    _check_pngs(res.pngs)


def test_only_unbounded_attack(results_dir: Path, tmp_path: Path) -> None:
    folder = _copy(results_dir, tmp_path / "unb")
    for name in ("summary", "samples"):
        df = pd.read_parquet(folder / f"{name}.parquet")
        df[df["attack"] == "cw-l2"].to_parquet(folder / f"{name}.parquet")
    res = build_report([folder], tmp_path / "u.pdf")
    _, text = _pdf_text(res.pdf)
    assert "No bounded attack has results" in text
    _check_pngs(res.pngs)


def test_two_folders_disambiguated(results_dir: Path, tmp_path: Path) -> None:
    a = _copy(results_dir, tmp_path / "run_a")
    b = make_results(tmp_path / "run_b", seed=1)
    with pytest.raises(UserError, match="different samples.*--force"):
        load_results([a, b])  # run_b drew other labels for the same indices
    bundle = load_results([a, b], force=True)
    assert bundle.forced and "different samples" in bundle.forced[0]
    assert bundle.models == sorted([f"{m} [{r}]" for m in (BASE, ATT) for r in ("run_a", "run_b")])
    assert set(bundle.attention_npz) == {f"{ATT} [run_a]", f"{ATT} [run_b]"}
    res = build_report([a, b], tmp_path / "two.pdf", force=True)
    _, text = _pdf_text(res.pdf)
    assert f"{BASE} [run_a]" in text and f"{ATT} [run_b]" in text
    assert "FORCED COMPARISON (--force)" in text.split("VERDICT")[0]
    # run_b drew other labels for the same indices: comparisons across the runs must not be paired
    for comp in res.verdict["norms"]["linf"]["comparisons"]:
        across = comp["model_a"].endswith("[run_a]") != comp["model_b"].endswith("[run_a]")
        assert comp["method"] == ("unpaired" if across else "paired")
    robust = pd.read_csv(tmp_path / "two_files" / "robust_accuracy.csv")
    assert set(robust["model"]) == set(bundle.models)
    _check_pngs(res.pngs)
    # a model and its own copy from the same folder are never compared; same model across runs may be
    c = _copy(results_dir, tmp_path / "run_c")
    v = compute_verdict(load_results([a, c]))
    for comp in v["norms"]["linf"]["comparisons"]:
        if comp["model_a"].split(" [")[0] == comp["model_b"].split(" [")[0]:
            assert not comp["significant"] and comp["diff"] == 0


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_report([tmp_path / "nope"], tmp_path / "x.pdf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="summary.parquet"):
        build_report([tmp_path / "empty"], tmp_path / "x.pdf")
    with pytest.raises(UserError):
        build_report([], tmp_path / "x.pdf")


def test_intervals() -> None:
    a = np.r_[np.ones(80), np.zeros(20)]
    b = np.r_[np.ones(40), np.zeros(60)]
    lo, hi = paired_diff_ci(a, b)
    assert 0.28 < lo < 0.4 < hi < 0.52
    lo, hi = paired_diff_ci(a, a)
    assert lo == hi == 0
    lo, hi = newcombe_diff(80, 100, 40, 100)
    assert 0.25 < lo < 0.4 < hi < 0.55


def test_failed_report_keeps_the_previous_one(results_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A report that breaks halfway leaves the earlier PDF and its files untouched, and no temporaries."""
    from robustbench_lta.reporting import pdf as pdf_mod

    out = tmp_path / "keep.pdf"
    first = build_report([results_dir], out)
    before = {p.name: p.read_bytes() for p in (tmp_path / "keep_files").iterdir()}
    pdf_before = out.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(pdf_mod, "per_class_page", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        build_report([results_dir], out)
    assert out.read_bytes() == pdf_before
    assert {p.name: p.read_bytes() for p in (tmp_path / "keep_files").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pdf", "keep_files"]
    assert all(p.parent == tmp_path / "keep_files" and p.is_file() for p in first.pngs + first.tables)


# --------------------------------------------------------------------------------- protocol v2
def _set_manifest(folder: Path, **changes) -> None:
    man = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        node = man
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    (folder / "manifest.json").write_text(json.dumps(man))


def test_verdict_numbers_equal_scipy_and_statsmodels(results_dir: Path) -> None:
    """Every p-value, Holm adjustment and interval of the verdict, recomputed on the same counts."""
    from scipy.stats import bootstrap
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportion_confint

    v = compute_verdict(load_results([results_dir]))
    samples = pd.read_parquet(results_dir / "samples.parquet")
    summary = pd.read_parquet(results_dir / "summary.parquet")
    bounded = samples[np.isfinite(samples["eps"]) & samples["attack"].isin(["fgsm", "pgd-linf"])]

    def robust_vector(model: str, eps: float) -> np.ndarray:  # the worst case, rebuilt with pandas
        s = bounded[(bounded["model"] == model) & (bounded["eps"] <= eps + EPS_TOL)]
        broken = s.groupby("index")["broken"].any().sort_index()
        first = s.drop_duplicates("index").set_index("index").sort_index()
        return ((first["clean_pred"] == first["label"]) & ~broken).to_numpy()

    def clean_vector(model: str) -> np.ndarray:
        first = samples[samples["model"] == model].drop_duplicates("index").set_index("index").sort_index()
        return (first["clean_pred"] == first["label"]).to_numpy()

    comps = v["clean_comparisons"] + v["norms"]["linf"]["comparisons"]
    assert len(comps) == 1 + 4  # clean and the four nonzero budgets: one Holm family
    pvals = []
    for c in comps:
        a = clean_vector(c["model_a"]) if c["eps"] is None else robust_vector(c["model_a"], c["eps"])
        b = clean_vector(c["model_b"]) if c["eps"] is None else robust_vector(c["model_b"], c["eps"])
        assert c["diff"] == pytest.approx(a.mean() - b.mean())
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        p = mcnemar(table, exact=True).pvalue if table[0][1] + table[1][0] else 1.0
        assert c["p"] == pytest.approx(p, rel=1e-12)
        ci = bootstrap(
            (a.astype(float) - b,),
            np.mean,
            n_resamples=4000,
            method="BCa",
            rng=np.random.default_rng(0),
            batch=500,
        ).confidence_interval
        assert c["ci"] == pytest.approx([ci.low, ci.high])
        pvals.append(p)
    reject, adjusted, _, _ = multipletests(pvals, alpha=0.05, method="holm")
    for c, r, adj in zip(comps, reject, adjusted, strict=True):
        assert c["p_holm"] == pytest.approx(adj) and c["significant"] == bool(r) and c["family"] == 5
    # the robust-accuracy table's intervals are statsmodels' Wilson intervals on the same counts
    res = build_report([results_dir], results_dir.parent / "stats.pdf")
    robust = pd.read_csv(results_dir.parent / "stats_files" / "robust_accuracy.csv")
    for r in robust.to_dict("records"):
        k = round(r["robust_acc_%"] / 100 * r["n"])
        lo, hi = proportion_confint(k, r["n"], method="wilson")
        assert r["ci_lo_%"] == pytest.approx(100 * lo, abs=1e-3)
        assert r["ci_hi_%"] == pytest.approx(100 * hi, abs=1e-3)
    # the verdict says which differences survive the correction
    assert "Holm correction over this pair's 5 tests" in res.verdict["text"]
    # ... summarised, not repeated per budget: how many budgets, as a compact range
    won = [c for c in comps if c["eps"] is not None and c["significant"]]
    assert f"significantly more robust at {len(won)} of 4 budgets" in res.verdict["text"]
    assert res.verdict["text"].count(f"({ATT})") == 0  # the model is not named once per budget
    # conditional robust accuracy = robust / clean of the same cell
    cond = pd.read_csv(results_dir.parent / "stats_files" / "robust_among_clean_correct.csv")
    wc = summary[(summary["attack"] == "worst-case") & (summary["eps"] > 0)]
    for r in wc.itertuples(index=False):
        row = cond[
            (cond["attack"] == "worst-case")
            & (cond["model"] == r.model)
            & (np.abs(cond["eps_01"] - r.eps) < EPS_TOL)
        ]
        assert row["robust_among_clean_correct_%"].iloc[0] == pytest.approx(
            100 * r.robust_acc / r.clean_acc, abs=1e-3
        )


def test_weak_attacks_say_upper_bound_and_strong_attack_removes_it(results_dir: Path, tmp_path: Path) -> None:
    import yaml

    res = build_report([results_dir], tmp_path / "weak.pdf")
    _, text = _pdf_text(res.pdf)
    first = text.split("2. Robustness curves")[0]
    assert "UPPER BOUNDS ONLY: at 8/255 (L-inf) no AutoAttack and no PGD/APGD with >= 50 steps" in first
    assert "Strongest attack at 8/255: pgd-linf (weak)" in first
    cfg_path = tmp_path / "weak_files" / "add_autoattack_run.yaml"
    assert f"robustbench-lta sweep {cfg_path}" in first
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["attacks"][-1] == {"name": "autoattack", "label": "autoattack", "eps": [8.0]}
    assert cfg["out"] == str(results_dir.resolve()) and cfg["models"][0]["source"] == "checkpoints/vgg16"
    # a 100-step PGD counts as strong: the sentence goes
    strong = _copy(results_dir, tmp_path / "strong")
    man = json.loads((strong / "manifest.json").read_text())
    man["attacks"]["pgd-linf"]["params"] = {"steps": 100}
    (strong / "manifest.json").write_text(json.dumps(man))
    v = compute_verdict(load_results([strong]))
    assert not v["weak"] and "UPPER BOUNDS" not in v["text"]
    assert v["norms"]["linf"]["strength"][ATT]["strong"] == {"pgd-linf": "pgd-linf, 100 steps"}


def test_attack_strength_rule() -> None:
    from robustbench_lta.reporting.protocol import attack_strength

    assert attack_strength("autoattack") == "AutoAttack"
    assert attack_strength("ta:AutoAttack") == "AutoAttack"
    assert attack_strength("my-autoattack-variant") == "AutoAttack"
    assert attack_strength("apgd-ce") == "apgd-ce, 100 steps"  # its default
    assert attack_strength("pgd-linf") is None and attack_strength("pgd-linf", {"steps": 50})
    assert attack_strength("ta:PGD", {"steps": 20}) is None and attack_strength("ta:APGD", {"steps": 60})
    assert attack_strength("fgsm") is None and attack_strength("square", {"n_queries": 5000}) is None


def test_incomparable_folders_refused_unless_forced(results_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="given twice"):
        load_results([results_dir, results_dir])
    with pytest.raises(UserError, match="given twice"):
        load_results([results_dir, results_dir / ".." / results_dir.name])
    other = _copy(results_dir, tmp_path / "other")
    _set_manifest(other, dataset__fingerprint={"sha256": "f" * 64})
    mine = _copy(results_dir, tmp_path / "mine")
    _set_manifest(mine, dataset__fingerprint={"sha256": "0" * 64})
    with pytest.raises(UserError, match="different data .*--force"):
        build_report([mine, other], tmp_path / "x.pdf")
    from robustbench_lta.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(mine), str(other), "--out", str(tmp_path / "x.pdf")])
    assert exc.value.code == 2
    # a different dataset name without fingerprints, too
    npz = _copy(results_dir, tmp_path / "npz")
    s = pd.read_parquet(npz / "summary.parquet")
    s.assign(dataset="npz:/data/x.npz").to_parquet(npz / "summary.parquet")
    with pytest.raises(UserError, match="different data"):
        load_results([results_dir, npz])
    res = build_report([results_dir, npz], tmp_path / "forced.pdf", force=True)
    _, text = _pdf_text(res.pdf)
    assert "FORCED COMPARISON (--force)" in text.split("2. Robustness curves")[0]


def test_worst_case_named_by_the_attacks_each_model_had(results_dir: Path, tmp_path: Path) -> None:
    folder = _copy(results_dir, tmp_path / "fewer")
    for name in ("summary", "samples"):
        df = pd.read_parquet(folder / f"{name}.parquet")
        df = df[~((df["model"] == BASE) & (df["attack"] == "pgd-linf"))]
        df.to_parquet(folder / f"{name}.parquet")
    v = compute_verdict(load_results([folder]))
    assert v["norms"]["linf"]["attacks_by_model"] == {BASE: ["fgsm"], ATT: ["fgsm", "pgd-linf"]}
    assert f"{BASE}: fgsm; {ATT}: fgsm, pgd-linf" in v["text"]
    assert "not like-for-like" in v["text"]


def test_selection_caveats_on_page_one(results_dir: Path, tmp_path: Path) -> None:
    folder = _copy(results_dir, tmp_path / "sel")
    man = json.loads((folder / "manifest.json").read_text())
    man["models"][BASE]["card"] = {"training": {"lr": 0.1}, "model": {"name": BASE}}  # older trainer
    man["models"][ATT]["card"] = {
        "model": {"name": ATT},
        "training": {},
        "selection": {
            "rule": "best validation accuracy",
            "split": "validation",
            "source_split": "train",
            "n": 500,
            "fraction": 0.1,
            "epoch": 7,
            "val_accuracy": 0.61,
        },
    }
    (folder / "manifest.json").write_text(json.dumps(man))
    res = build_report([folder], tmp_path / "sel.pdf")
    _, text = _pdf_text(res.pdf)
    first = text.split("2. Robustness curves")[0]
    assert f"{BASE}: the checkpoint's card records no selection split" in first
    assert "older trainer" in first and f"{ATT}: the checkpoint's card" not in first
    assert (
        "selection: best validation accuracy on a validation split of 500 train images (10%) epoch 7" in first
    )


def test_figures_are_honest(results_dir: Path, tmp_path: Path) -> None:
    from robustbench_lta.reporting.attention_figures import load_npz, pick_clean_correct
    from robustbench_lta.reporting.curves import curves_table

    data = load_npz(results_dir / "attention" / f"{ATT}.npz")
    rows, sentence = pick_clean_correct(data)
    correct = [i for i in range(len(data["labels"])) if data["clean_pred"][i] == data["labels"][i]]
    assert (
        rows == correct[:6] and f"of the {len(correct)} clean-correct images among the 4 stored" in sentence
    )
    folder = _copy(results_dir, tmp_path / "two_budgets")
    for name in ("summary", "samples"):
        df = pd.read_parquet(folder / f"{name}.parquet")
        keep = ~((df["attack"] == "fgsm") & ~np.isin(np.round(df["eps"] * 255), [2, 8]))
        df[keep].to_parquet(folder / f"{name}.parquet")
    bundle = load_results([folder])
    auc = curves_table(bundle)
    few = auc[auc["attack"] == "fgsm"]
    assert (few["points"] == 2).all() and few["auc_mean_robust_acc_%"].isna().all()
    assert auc[auc["attack"] == "pgd-linf"]["auc_mean_robust_acc_%"].notna().all()
    res = build_report([folder], tmp_path / "h.pdf", curves="both")
    _, text = _pdf_text(res.pdf)
    # two budgets are points, not a curve: in the shared panel, labelled with their budgets, no AUC
    assert "attacks at one or two budgets (L-inf)" in text and "fgsm at 2/255, 8/255" in text
    assert "AUC" in text and "over 0-8/255" in text
    assert "among clean-correct" in text and "clean-correct images among the 4 stored" in text
    assert "n=" in text  # drift points carry their n
    assert "two forwards of the same batch agree" not in text  # passing sanity rows: counted, not listed
    assert "rises from 40.0% to 42.0%" in text and "(above chance 10%)" in text  # warn/fail in full
    assert "5 pass, 1 warn, 1 fail" in text
