"""Study v3: Holm-corrected family comparisons, the bootstrap p-value, and the study script's recipes."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta.analysis.bootstrap import (
    bootstrap_p_value,
    two_level_bootstrap_diff,
    two_level_diff_replicates,
)
from robustbench_lta.reporting.family import family_comparisons
from robustbench_lta.reporting.stats import holm

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bootstrap_p_value_tails() -> None:
    assert bootstrap_p_value(np.full(999, 0.1)) == pytest.approx(2 / 1000)  # never 0: p < 1/B at best
    assert bootstrap_p_value(np.full(999, -0.1)) == pytest.approx(2 / 1000)
    sym = np.linspace(-1, 1, 1001)
    assert bootstrap_p_value(sym) == pytest.approx(1.0)
    # the refactor kept the interval's replicates: same draws as before for the same rng
    rng = np.random.default_rng(3)
    a, b = (rng.random((3, 200)) < 0.6).astype(float), (rng.random((2, 200)) < 0.5).astype(float)
    reps = two_level_diff_replicates(a, b, replicates=300, rng=5)
    iv = two_level_bootstrap_diff(a, b, replicates=300, rng=5)
    assert (iv.low, iv.high) == (float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975)))


def _bundle(rates: dict[str, float], seeds: int = 3, n: int = 400, eps: tuple[float, ...] = (0.01, 0.02)):
    """A results bundle of FGSM rows: each family's seeds robust with probability ``rate`` per sample."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    summary, samples, models = [], [], []
    for fam, rate in rates.items():
        for s in range(seeds):
            model = f"{fam}@seed{s}"
            models.append(model)
            for e in eps:
                broken = rng.random(n) > rate
                samples.append(pd.DataFrame({"model": model, "attack": "fgsm", "eps": e,
                                             "index": np.arange(n), "label": labels, "clean_pred": labels,
                                             "broken": broken}))
                summary.append({"model": model, "attack": "fgsm", "norm": "linf", "eps": e, "status": "ok",
                                "robust_acc": float(1 - broken.mean())})
    return SimpleNamespace(models=models, summary=pd.DataFrame(summary), samples=pd.concat(samples),
                           has_attention={})


def test_family_comparisons_holm_corrected_intervals() -> None:
    bundle = _bundle({"att": 0.75, "base": 0.45, "same": 0.45})
    table = family_comparisons(bundle, [("att", "base"), ("same", "base"), ("missing", "base")],
                               attacks=("fgsm",), replicates=1000)
    assert len(table) == 4 and table["comparisons"].eq(4).all()  # the missing family adds no row
    _, adjusted = holm(table["p"].tolist())
    assert table["p_holm"].tolist() == pytest.approx(adjusted)
    big = table[table["family"] == "att"]
    assert big["reject"].all() and (big["diff_low"] > 0).all()
    assert big["diff"].between(0.2, 0.4).all()
    same = table[table["family"] == "same"]
    assert not same["reject"].any() and ((same["diff_low"] <= 0) & (same["diff_high"] >= 0)).all()
    # the smallest p faces alpha / m, the largest alpha / 1: levels step down with the rank
    order = table.sort_values("p", kind="stable")
    assert order["holm_level"].iloc[0] == pytest.approx(1 - 0.05 / 4)
    assert order["holm_level"].iloc[-1] == pytest.approx(0.95)
    # a Holm interval is at least as wide as the plain 95 % one of the same replicates
    plain = family_comparisons(bundle, [("att", "base")], attacks=("fgsm",), replicates=1000, alpha=0.05)
    assert plain["comparisons"].eq(2).all()
    four, two = big.iloc[0], plain.iloc[0]
    assert (four["diff_high"] - four["diff_low"]) >= (two["diff_high"] - two["diff_low"]) - 1e-12
    only = family_comparisons(bundle, [("att", "base")], attacks=("fgsm",), eps=[0.02], replicates=1000)
    assert len(only) == 1 and only["eps"].iloc[0] == pytest.approx(0.02)


def _study():
    sys.path.insert(0, str(BENCH))
    try:
        import study
    finally:
        sys.path.remove(str(BENCH))
    return study


def test_every_recipe_builds_a_valid_config_for_every_family(tmp_path) -> None:
    study = _study()
    for recipe in study.RECIPES.values():
        for fam in study.FAMILIES:
            cfg = study.train_config(recipe, fam, 0, "cluttered-digits", tmp_path, threads=1)
            assert cfg.model.name == fam.model and cfg.model.width == recipe.width
            assert cfg.adversarial.method == (recipe.adv_method if fam.adversarial else "none")
            assert cfg.epochs == (recipe.adv_epochs if fam.adversarial else recipe.epochs) * fam.epoch_factor
            assert cfg.lr_schedule == "onecycle" and cfg.val_fraction > 0
            if fam.adversarial:  # the training attack as the recipe gives it (steps, step in /255)
                assert cfg.adversarial.train_steps == recipe.adv_steps
                assert cfg.adversarial.step01 == recipe.adv_step_size / 255
            assert cfg.out == str(tmp_path / fam.label / "seed0")
    labels = {f.label for f in study.STUDY_FAMILIES}
    # the sweep: every recipe's attacks validate (plugins' parameters included), cascade accounting,
    # AutoAttack after the other white-box attacks, as the recipe's subset where it names one
    run = tmp_path / "vgg16" / "seed0"
    run.mkdir(parents=True)
    (run / "best.json").write_text(json.dumps({"clean_test_accuracy": 0.8}))
    for recipe in study.RECIPES.values():
        args = argparse.Namespace(families=[study.FAMILIES[0]], runs=tmp_path, threads=1,
                                  results=tmp_path / "results", archive=None)
        cfg = study.sweep_config(replace(recipe, seeds=(0,)), args, "cluttered-digits")
        names = [a.name for a in cfg.attacks]
        assert cfg.accounting == "cascade" and names[0] == "fgsm" and names[-1] == "square"
        assert cfg.explorer_samples == 0  # the CPU recipe's results folder is committed
        aa = [a for a in cfg.attacks if a.name == "autoattack"]
        assert len(aa) == (1 if recipe.autoattack_eps else 0)
        if aa:
            assert names.index("autoattack") > names.index("attn-hijack")
            assert aa[0].params.get("attacks") == (list(recipe.autoattack_attacks)
                                                   if recipe.autoattack_attacks else None)
    assert {a for pair in study.COMPARISONS for a in pair} <= labels and len(study.STUDY_FAMILIES) == 6


def test_study_counts_a_run_finished_only_once_tested(tmp_path) -> None:
    study = _study()
    run = tmp_path / "seed0"
    run.mkdir()
    assert not study.finished(run, 3)
    (run / "best.json").write_text(json.dumps({"model": {}}))
    (run / "trainer_state.json").write_text(json.dumps({"epoch": 3}))
    assert not study.finished(run, 3)  # not tested yet: training stopped before the test pass
    (run / "best.json").write_text(json.dumps({"clean_test_accuracy": 0.8}))
    assert study.finished(run, 3) and not study.finished(run, 4)
    # the first epoch from before cpu_seconds existed: it counts 0 there, not an error
    (run / "history.csv").write_text("epoch,seconds,cpu_seconds\n1,10.5,\n2,11.5,20.25\n")
    assert study.run_seconds(run) == pytest.approx(22.0)
    assert study.run_seconds(run, "cpu_seconds") == pytest.approx(20.25)


def test_finished_networks_go_to_the_archive_and_are_not_trained_again(tmp_path, capsys) -> None:
    """A sitting's machine keeps nothing: finished runs are copied to the committed archive, and a
    later sitting with an empty runs/ finds them there (trains nothing, sweeps the archived weights)."""
    study = _study()
    archive, runs = tmp_path / "archive", tmp_path / "runs"
    argv = ["--recipe", "rehearsal", "--data", "cluttered-digits", "--families", "vgg16", "--stages", "train",
            "--archive", str(archive), "--runs", str(runs), "--threads", "1"]
    assert study.main(argv) == 0
    kept = archive / "networks" / "vgg16" / "seed0"
    assert sorted(p.name for p in kept.iterdir()) == sorted(study_archive().ARCHIVED_FILES)
    card = json.loads((kept / "best.json").read_text())
    assert card["clean_test_accuracy"] is not None
    shutil.rmtree(runs)  # the next sitting's machine
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "epochs" not in capsys.readouterr().out and not runs.exists()  # nothing trained again
    args = argparse.Namespace(families=[study.FAMILIES[0]], runs=runs, threads=1, results=archive / "results",
                              archive=archive)
    cfg = study.sweep_config(study.RECIPES["rehearsal"], args, "cluttered-digits")
    assert [m.source for m in cfg.models] == [str(kept)]


def test_the_archive_refuses_weights_that_do_not_match_their_card(tmp_path) -> None:
    from robustbench_lta.errors import UserError

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"not the weights")
    (run / "best.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(UserError, match="does not match"):
        study_archive().archive_run(run, tmp_path / "kept")
    assert not (tmp_path / "kept" / "best.json").exists()


def study_archive():
    _study()
    import study_archive as module

    return module


def test_runs_side_by_side_are_archived_each_in_its_own_process(tmp_path, monkeypatch) -> None:
    study = _study()
    monkeypatch.syspath_prepend(str(BENCH))  # the spawned trainers unpickle study_archive.archive_run
    archive = tmp_path / "archive"
    families = ("vgg16", "vgg16_matched", "vgg16_at")  # two at once, the third queued
    argv = ["--recipe", "rehearsal", "--data", "cluttered-digits", "--families", ",".join(families),
            "--stages", "train", "--archive", str(archive), "--runs", str(tmp_path / "runs"),
            "--threads", "2", "--jobs", "2"]
    assert study.main(argv) == 0
    for fam in families:  # the queued run too: threads // jobs, not the whole machine
        card = json.loads((archive / "networks" / fam / "seed0" / "best.json").read_text())
        assert card["threads"] == 1 and card["clean_test_accuracy"] is not None


def test_a_run_stopped_mid_way_resumes_on_the_next_sittings_machine(tmp_path, monkeypatch, capsys) -> None:
    """SIGTERM/Ctrl-C in a run: its last finished epoch goes to the archive's unfinished/, a sitting
    with an empty runs/ resumes from there, and the network equals one trained without the stop."""
    from safetensors.torch import load_file

    from robustbench_lta.training import run as training_run

    study = _study()
    archive, runs = tmp_path / "archive", tmp_path / "runs"
    argv = ["--recipe", "rehearsal", "--data", "cluttered-digits", "--families", "vgg16", "--stages", "train",
            "--archive", str(archive), "--runs", str(runs), "--threads", "1"]
    real, calls = training_run.augment, {"n": 0}

    def stop_in_epoch_two(*a, **k):  # 251 training images / batch 64: 4 steps per epoch
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training_run, "augment", stop_in_epoch_two)
    assert study.main(argv) == 130
    held = archive / "unfinished" / "vgg16" / "seed0"
    assert "stopped after epoch 1 of 3" in capsys.readouterr().out
    assert study_archive().epochs_done(held) == 1 and not (archive / "networks").exists()
    monkeypatch.setattr(training_run, "augment", real)
    shutil.rmtree(runs)  # the next sitting's machine
    assert study.main(argv) == 0
    assert "resumes after epoch 1 of 3" in capsys.readouterr().out
    kept = archive / "networks" / "vgg16" / "seed0"
    assert not held.exists() and not (archive / "unfinished").exists()
    assert json.loads((kept / "best.json").read_text())["clean_test_accuracy"] is not None
    # the same network as a run never stopped
    assert study.main([*argv[:-6], "--archive", str(tmp_path / "whole"), "--runs", str(tmp_path / "r2"),
                       "--threads", "1"]) == 0
    a = load_file(kept / "best.safetensors")
    b = load_file(tmp_path / "whole" / "networks" / "vgg16" / "seed0" / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unfinished_copy_never_replaces_a_later_one(tmp_path) -> None:
    archive = study_archive()
    folders = {name: tmp_path / name for name in ("run", "held", "older")}
    for (name, folder), epoch in zip(folders.items(), (2, 3, 1), strict=True):
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"epoch": epoch}))
        (folder / "mark").write_text(name)
    assert archive.keep_unfinished(folders["run"], folders["held"]) == 3  # the archive is further along
    assert (folders["held"] / "mark").read_text() == "held"
    assert archive.restore_unfinished(folders["older"], folders["run"]) == 0  # the local run is further
    assert (folders["run"] / "mark").read_text() == "run"


def test_two_study_processes_sharing_a_results_folder_keep_each_others_timings(tmp_path) -> None:
    """The train stage in one process, the sweep of the networks already finished in another: each
    sitting is added to the file as it is on disk then, so neither overwrites the other's."""
    study = _study()
    path, recipe = tmp_path / "study_timings.json", study.RECIPES["rehearsal"]
    study.record_sitting(path, recipe, "sweep", 100.0, 150.0, {})
    study.record_sitting(path, recipe, "train", 600.0, 590.0, {"train_per_run_s": {"vgg16@seed0": 1.0}})
    timings = study.record_sitting(path, recipe, "sweep", 50.0, 60.0, {})
    assert timings["sittings_s"] == {"sweep": [100.0, 50.0], "train": [600.0]}
    assert timings["sweep_s"] == 150.0 and timings["sweep_cpu_s"] == 210.0 and timings["train_s"] == 600.0
    assert json.loads(path.read_text())["train_per_run_s"] == {"vgg16@seed0": 1.0}


def test_the_archive_is_not_ignored_by_git() -> None:
    """The archive's results folder once matched the top-level `results/` ignore rule: every sitting's
    sweep would have been lost with its machine. Skips outside a git checkout."""
    import subprocess

    root = BENCH.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["benchmarks/study3/results/summary.csv", "benchmarks/study3/results/units/m__a__k/0-500.parquet",
             "benchmarks/study3/networks/vgg16/seed0/best.safetensors",
             "benchmarks/study3/unfinished/vgg16/seed0/last.safetensors"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True)
    assert ignored.stdout.split() == []
    scratch = ["runs/x", "results/x", "benchmarks/study3/results/.lock"]
    scratch = subprocess.run(["git", "check-ignore", *scratch], cwd=root, capture_output=True, text=True)
    assert len(scratch.stdout.split()) == 3
