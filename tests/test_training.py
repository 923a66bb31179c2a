"""Training layer: a real (tiny) training run, checkpoints + cards, pickle refusal, resume, bad configs.

One session-scoped run trains a narrow attention VGG on cluttered-digits; the other tests reuse it.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustbench_lta.config import TrainConfig, load_config, validate
from robustbench_lta.errors import UserError
from robustbench_lta.models.registry import create_model
from robustbench_lta.training import checkpoint as ckpt
from robustbench_lta.training import trainer
from robustbench_lta.training.checkpoint import load_model, read_card, save_checkpoint
from robustbench_lta.training.trainer import HISTORY_COLUMNS, augment, train
from robustbench_lta.utils import sha256_file

ATT_MODEL = "vgg16_att3_concat_pc"
REPO = Path(__file__).resolve().parents[1]


def _config(out: Path, **overrides) -> TrainConfig:
    data = {
        "model": {"name": ATT_MODEL, "width": 0.0625},
        "data": {"name": "cluttered-digits", "n_train": 1500, "n_test": 300},
        "augment": {"flip": False, "crop_padding": 2},
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.05,
        "lr_step_epochs": 2,
        "warmup_epochs": 1,
        "seed": 0,
        "device": "cpu",
        "out": str(out),
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return validate(TrainConfig, data)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The accuracy run: a 1/8-width VGG-16 baseline, 2000 images, 6 epochs (~15 s on 2 idle cores)."""
    out = tmp_path_factory.mktemp("train") / "run"
    cfg = _config(
        out,
        model={"name": "vgg16", "width": 0.125},
        data={"n_train": 2000},
        augment={"crop_padding": 0},
        epochs=6,
        batch_size=32,
        lr=0.01,
        warmup_epochs=0,
        lr_step_epochs=3,
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def trained_attention(tmp_path_factory: pytest.TempPathFactory):
    """A briefly trained attention model (non-trivial BatchNorm statistics) for checkpoint tests."""
    out = tmp_path_factory.mktemp("train") / "att"
    return train(_config(out, data={"n_train": 256, "n_test": 64}, epochs=1), progress=False)


# -------------------------------------------------------------------------------------- training
def test_training_beats_chance(trained) -> None:
    # 10 classes: chance is 10%. Tiny-width VGG-16 needs a few epochs to take off on the cluttered
    # digits: after 4 epochs runs measured 0.17-0.29 validation accuracy across seeds and memory
    # formats (NCHW / NHWC round differently), so the run takes 6 epochs and 0.2 leaves margin.
    assert trained.best_acc > 0.2, trained.history
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    assert len(trained.history) == 6
    assert trained.best_path.is_file() and trained.last_path.is_file()
    with open(trained.out_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert trained.test_acc > 0.2  # measured once, on the chosen epoch
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[3]["lr"]) == pytest.approx(0.01 * 0.5)  # halved after lr_step_epochs=3
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    # CPU time of the epoch, all threads: positive, and not more than the threads could spend (one
    # thread of slack for the process's others: Python, the loader's copies)
    threads = torch.get_num_threads() + 1
    assert all(0 < float(r["cpu_seconds"]) <= threads * float(r["seconds"]) + 0.5 for r in rows)


def test_card_has_all_fields_and_matching_sha(trained_attention) -> None:
    card = read_card(trained_attention.best_path)
    for key in (
        "format_version",
        "created",
        "model",
        "dataset",
        "normalization",
        "input_size",
        "training",
        "seed",
        "epochs",
        "clean_test_accuracy",
        "clean_val_accuracy",
        "selection",
        "versions",
        "git_commit",
        "sha256",
        "weights",
    ):
        assert key in card, key
    assert card["model"]["name"] == ATT_MODEL
    assert card["model"]["num_classes"] == 10
    assert card["model"]["has_attention"] is True
    assert card["dataset"]["name"] == "cluttered-digits"
    assert card["input_size"] == [3, 32, 32]
    assert len(card["normalization"]["mean"]) == 3 and len(card["normalization"]["std"]) == 3
    assert card["training"]["lr"] == 0.05 and card["epochs"] == 1
    assert card["clean_val_accuracy"] == pytest.approx(trained_attention.best_acc)
    assert card["clean_test_accuracy"] == pytest.approx(trained_attention.test_acc)
    assert card["selection"]["split"] == "validation"
    assert 20 <= card["selection"]["n"] <= 32 and card["selection"]["n"] + card["dataset"]["n_train"] == 256
    assert card["sha256"] == sha256_file(trained_attention.best_path)
    assert "torch" in card["versions"]
    assert read_card(trained_attention.out_dir) == card  # a run folder means best


def test_checkpoint_round_trip_identical_logits(trained_attention, tmp_path: Path) -> None:
    model = load_model(trained_attention.best_path)
    assert not model.training and model.card["model"]["name"] == ATT_MODEL
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
    saved = save_checkpoint(model, tmp_path / "copy", {"note": "round trip"})
    assert saved == tmp_path / "copy.safetensors" and (tmp_path / "copy.json").is_file()
    for source in (saved, tmp_path / "copy.json"):
        again = load_model(source)
        with torch.no_grad():
            logits2, maps2 = again(x, return_attention=True)
        assert torch.equal(logits, logits2)
        assert len(maps) == len(maps2) == 3
        assert all(torch.equal(a, b) for a, b in zip(maps, maps2, strict=True))
    assert read_card(saved)["note"] == "round trip"


def test_fresh_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("vgg16_att2_concat_pc", num_classes=7, width=0.0625).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {})
    loaded = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    weights = load_file(path)
    assert all(t.is_contiguous() for t in weights.values())
    assert read_card(path)["model"]["num_classes"] == 7


def test_tampered_weights_refused(trained_attention, tmp_path: Path) -> None:
    for name in ("best.safetensors", "best.json"):
        (tmp_path / name).write_bytes((trained_attention.out_dir / name).read_bytes())
    data = bytearray((tmp_path / "best.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "best.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="weights do not match their card: file changed or corrupted"):
        load_model(tmp_path)


class _CreatesFileWhenUnpickled:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_files_refused_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    trap = {"state": _CreatesFileWhenUnpickled(str(marker))}
    for suffix in (".pt", ".pth", ".pkl", ".ckpt", ".weights"):
        path = tmp_path / f"evil{suffix}"
        if suffix == ".pkl":
            path.write_bytes(pickle.dumps(trap))
        else:
            torch.save(trap, path)
        with pytest.raises(UserError, match="pickle") as info:
            load_model(path)
        assert "\n" not in str(info.value) and "weights_only=True" in str(info.value)
        with pytest.raises(UserError, match="pickle"):
            read_card(path)
    assert not marker.exists()
    # the trap works: unpickling does create the file, so its absence above means nothing was unpickled
    torch.load(tmp_path / "evil.pt", weights_only=False)["state"].close()
    assert marker.exists()


def test_pickle_renamed_to_safetensors_refused(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    torch.save({"state": _CreatesFileWhenUnpickled(str(marker))}, tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="card"):
        load_model(tmp_path / "x.safetensors")
    model = create_model("vgg16", num_classes=10, width=0.0625)
    save_checkpoint(model, tmp_path / "y", {})
    (tmp_path / "y.safetensors").write_bytes((tmp_path / "x.safetensors").read_bytes())
    card = json.loads((tmp_path / "y.json").read_text())
    card["sha256"] = sha256_file(tmp_path / "y.safetensors")
    (tmp_path / "y.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(tmp_path / "y.safetensors")
    assert not marker.exists()


def test_missing_paths_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothere"):
        load_model(tmp_path / "nothere.safetensors")
    with pytest.raises(UserError, match="no checkpoint in folder"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "gone.pt")


def test_save_checkpoint_needs_registry_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="create_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x", {})


# ---------------------------------------------------------------------------------------- resume
def _resume_config(out: Path, epochs: int) -> TrainConfig:
    return _config(
        out,
        model={"name": "vgg16", "width": 0.0625},
        data={"n_train": 128, "n_test": 32},
        augment={"flip": True, "crop_padding": 2},
        epochs=epochs,
        lr_step_epochs=1,
    )


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(_resume_config(tmp_path / "full", 2), progress=False)
    first = train(_resume_config(tmp_path / "split", 1), progress=False)
    assert len(first.history) == 1
    second = train(_resume_config(tmp_path / "split", 2), progress=False)
    assert second.resumed_from == 1 and [r["epoch"] for r in second.history] == [1, 2]
    a = load_file(full.last_path)
    b = load_file(second.last_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(second.last_path)["epochs"] == 2
    # a finished run is not trained again; a different recipe in the same folder is refused
    assert train(_resume_config(tmp_path / "split", 2), progress=False).resumed_from == 2
    with pytest.raises(UserError, match="lr=0.05"):
        train(_resume_config(tmp_path / "split", 3).model_copy(update={"lr": 0.1}), progress=False)


def test_resumed_auto_run_keeps_its_first_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`amp: auto` decides once per run: a resumed sitting that measures otherwise (a busy machine)
    keeps what the first sitting chose; history.csv names each epoch's precision."""
    from robustbench_lta import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *a: True)
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda *a: 1.0)  # the first sitting: float32
    cfg = _resume_config(tmp_path / "run", 1).model_copy(update={"amp": "auto"})
    train(cfg, progress=False)
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda *a: 10.3)  # a later, busier measurement
    resumed = train(cfg.model_copy(update={"epochs": 2}), progress=False)
    assert resumed.precision == "float32"
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [r["precision"] for r in rows] == ["float32", "float32"]
    card = read_card(resumed.last_path)
    assert card["precision"] == "float32" and "a resumed run keeps its precision" in card["amp"]
    # a fresh run on the same machine takes the new measurement
    fresh = train(_resume_config(tmp_path / "fresh", 1).model_copy(update={"amp": "auto"}), progress=False)
    assert fresh.precision == "bf16 autocast"


def test_keyboard_interrupt_leaves_last_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _resume_config(tmp_path / "run", 2)
    calls = {"n": 0}
    from robustbench_lta.training import run as training_run  # the epoch loop augments each batch

    real = training_run.augment

    def interrupt_in_epoch_two(x, generator, padding, flip):
        calls["n"] += 1
        if calls["n"] > 2:  # 128 images / batch 64 = 2 steps per epoch
            raise KeyboardInterrupt
        return real(x, generator, padding, flip)

    monkeypatch.setattr(training_run, "augment", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(training_run, "augment", real)
    assert read_card(tmp_path / "run" / "last.json")["epochs"] == 1
    load_model(tmp_path / "run" / "last.safetensors")
    resumed = train(cfg, progress=False)
    full = train(_resume_config(tmp_path / "full", 2), progress=False)
    a, b = load_file(resumed.last_path), load_file(full.last_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_config_same_weights_on_cpu(tmp_path: Path) -> None:
    a = train(_resume_config(tmp_path / "a", 1), progress=False)
    b = train(_resume_config(tmp_path / "b", 1), progress=False)
    wa, wb = load_file(a.last_path), load_file(b.last_path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_defer_keyboard_interrupt_finishes_the_block() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with ckpt.defer_keyboard_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
    assert finished


# ---------------------------------------------------------------------------------- augmentation
def test_augment_crops_and_flips_reproducibly() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out1 = augment(x, torch.Generator().manual_seed(3), padding=2, flip=True)
    out2 = augment(x, torch.Generator().manual_seed(3), padding=2, flip=True)
    assert out1.shape == x.shape and torch.equal(out1, out2)
    # every output is a shifted (and maybe mirrored) window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out1[i], w) or torch.equal(out1[i], w.flip(2)) for w in windows)
    u8 = (torch.rand(4, 3, 8, 8) * 255).to(torch.uint8)
    assert augment(u8, torch.Generator().manual_seed(0), 0, False).equal(u8)
    assert augment(u8, torch.Generator().manual_seed(0), 4, True).dtype == torch.uint8


# ----------------------------------------------------------------------------------- bad configs
def test_bad_configs_are_one_line_user_errors(tmp_path: Path) -> None:
    base = {"model": {"name": "vgg16"}}
    for data, pattern in (
        ({**base, "epochz": 3}, "unknown key 'epochz'"),
        ({**base, "epochs": -1}, "epochs"),
        ({"model": {"name": "vgg16", "widht": 1}}, "unknown key 'model.widht'"),
    ):
        with pytest.raises(UserError, match=pattern) as info:
            validate(TrainConfig, data)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError) as info:
        train(validate(TrainConfig, {"model": {"name": "vgg17"}, "out": str(tmp_path / "x")}), progress=False)
    assert "vgg17" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    from robustbench_lta.models.registry import model_info

    cfg = load_config(TrainConfig, path)
    model_info(cfg.model.name)
    adv = cfg.adversarial
    if adv.method == "pgd":  # Rice et al. 2020's PGD-AT recipe
        recipe = (cfg.epochs, cfg.lr, cfg.lr_step_epochs, cfg.lr_gamma, cfg.weight_decay)
        assert recipe == (200, 0.1, 100, 0.1, 5e-4)
        assert (adv.norm, adv.eps01, adv.step01, adv.steps) == ("linf", 8 / 255, 2 / 255, 10)
        assert cfg.val_fraction > 0 and adv.eval_every == 1
    elif adv.method == "trades":  # Zhang et al. 2019's CIFAR recipe
        recipe = (cfg.epochs, cfg.lr, cfg.lr_step_epochs, cfg.lr_gamma, cfg.weight_decay)
        assert recipe == (100, 0.1, 75, 0.1, 2e-4)
        assert (adv.eps01, adv.steps, adv.beta) == (8 / 255, 10, 6.0)
        assert abs(adv.step01 - 0.007) < 1e-9
    elif adv.method == "fgsm-rs":  # a CPU-scale recipe
        assert cfg.lr_schedule == "onecycle" and adv.eps01 == 8 / 255
    elif cfg.data.name in ("cifar10", "cifar100", "svhn"):
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_step_epochs, cfg.lr_gamma) == (
            300,
            128,
            0.1,
            25,
            0.5,
        )
        assert (cfg.momentum, cfg.weight_decay, cfg.data.download) == (0.9, 5e-4, False)
        assert cfg.augment.flip == (cfg.data.name != "svhn")
    else:
        assert cfg.device == "cpu" and not cfg.augment.flip


# ----------------------------------------------------------------------------- validation selection
def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    from robustbench_lta.training.selection import stratified_split

    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 30, 20, 10, 10, 10, 10, 10, 40, 10]))
    train_idx, val_idx = stratified_split(labels, 0.1, seed=3)
    assert set(train_idx).isdisjoint(val_idx) and len(train_idx) + len(val_idx) == len(labels)
    counts = torch.bincount(labels[torch.as_tensor(val_idx)], minlength=10).tolist()
    assert counts == [5, 3, 2, 1, 1, 1, 1, 1, 4, 1]  # round(10% of each class)
    again, _ = stratified_split(labels, 0.1, seed=3)
    other = stratified_split(labels, 0.1, seed=4)[1]
    assert (again == train_idx).all() and set(other) != set(val_idx)
    assert len(stratified_split(labels, 0.0, seed=3)[1]) == 0


def test_best_is_chosen_on_validation_and_test_measured_once(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path / "run",
        model={"name": "smallcnn", "width": 0.25},
        data={"n_train": 400, "n_test": 64},
        epochs=3,
        lr=0.02,
        warmup_epochs=0,
        val_fraction=0.2,
    )
    result = train(cfg, progress=False)
    best, last = read_card(tmp_path / "run" / "best.json"), read_card(tmp_path / "run" / "last.json")
    vals = [r["val_acc"] for r in result.history]
    n_val = best["selection"]["n"]
    assert best["selection"]["split"] == "validation" and 72 <= n_val <= 88  # ~20% of 400, per class
    assert best["selection"]["n_train"] == best["dataset"]["n_train"] == 400 - n_val
    assert best["epochs"] == result.best_epoch == 1 + vals.index(max(vals))  # first epoch with the max
    assert best["clean_val_accuracy"] == pytest.approx(max(vals), abs=1e-6)
    assert best["test_measurements"] == 1 and best["clean_test_accuracy"] == pytest.approx(result.test_acc)
    assert "test_acc" not in result.history[0]  # no per-epoch look at the test split
    assert last["selection"]["rule"] == "last epoch" and last["selection"]["split"] is None
    # the test split was measured on the chosen weights: re-measure them here
    model = load_model(tmp_path / "run" / "best.json")
    test = trainer.load_splits(cfg)[1]
    with torch.no_grad():
        acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(result.test_acc)
    # running again (already trained) does not look at the test split again
    again = train(cfg, progress=False)
    assert read_card(tmp_path / "run" / "best.json")["test_measurements"] == 1
    assert again.test_acc == result.test_acc


def test_val_fraction_zero_keeps_the_last_epoch(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path / "run", model={"name": "smallcnn", "width": 0.25}, data={"n_train": 200, "n_test": 32},
        epochs=2, warmup_epochs=0, val_fraction=0,
    )
    result = train(cfg, progress=False)
    best = read_card(tmp_path / "run" / "best.json")
    assert best["selection"] == {**best["selection"], "rule": "last epoch", "split": None, "n": 0}
    assert best["epochs"] == 2 and best["dataset"]["n_train"] == 200
    from safetensors.torch import load_file  # the same weights (file bytes may differ in metadata)

    b, last = (load_file(str(tmp_path / "run" / f"{k}.safetensors")) for k in ("best", "last"))
    assert b.keys() == last.keys() and all(torch.equal(b[k], last[k]) for k in b)
    assert best["clean_test_accuracy"] == pytest.approx(result.test_acc)


def test_selection_note_flags_unknown_and_test_selection() -> None:
    from robustbench_lta.training.selection import selection_note

    assert selection_note({"selection": {"rule": "best", "split": "validation"}}, "m") is None
    assert selection_note({"selection": {"rule": "last epoch", "split": None}}, "m") is None
    assert "older trainer" in selection_note({"training": {"lr": 0.1}}, "m")
    assert "does not say" in selection_note({"model": {"name": "x"}}, "m")
    assert "no model card" in selection_note(None, "m")
    assert "selection bias" in selection_note({"selection": {"rule": "best", "split": "test"}}, "m")
