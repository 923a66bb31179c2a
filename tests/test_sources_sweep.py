"""Model sources end to end, through the CLI and run_sweep: a RobustBench zoo model (planted random
weights), a timm model at its own input size, a bare state dict and a project checkpoint side by
side; ImageNet-style folders with resize/crop and a class subset that keeps the card's labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_lta.sources.zoo import CIFAR10_CLASSES

timm = pytest.importorskip("timm")
TIMM_TINY = "test_efficientnet"


def run_cli(*args: str) -> int:
    from robustbench_lta.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _plant_timm(cache: Path, name: str, seed: int = 0) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    rev = "0" * 40
    base = cache / f"models--{timm.models.get_pretrained_cfg(name).hf_hub_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    (base / "snapshots" / rev).mkdir(parents=True)
    target = base / "snapshots" / rev / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))


def _mixed_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = [(300, 260), (280, 400), (500, 375), (256, 256)]
    k = 0
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[k % len(sizes)]
            k += 1
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    return root


def test_imagenet_folder_resize_crop_keeps_card_labels(tmp_path: Path, monkeypatch, capsys) -> None:
    """Mixed-size folder of 3 synsets (ImageNet indices 1, 207, 980) through a timm model whose card
    names the 1000 synsets: resized 256 / cropped 224, labels are the card's indices."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _plant_timm(tmp_path / "hub", TIMM_TINY)
    from timm.data import ImageNetInfo

    synsets = list(ImageNetInfo("imagenet-1k").label_names())
    picked = [synsets[1], synsets[207], synsets[980]]
    folder = _mixed_folder(tmp_path / "val", picked)
    base = ["sweep", "--model", f"timm:{TIMM_TINY}", "--data", f"imagefolder:{folder}", "--attack", "fgsm",
            "--eps", "0,1", "--n", "6", "--quiet", "--set", "sanity_samples=0",
            "--set", "attention_samples=0"]
    # mixed sizes, no resize given: the model's own preprocessing (its card) makes them its input size
    assert run_cli(*base, "--out", str(tmp_path / "r0")) == 0, capsys.readouterr().err
    own = json.loads((tmp_path / "r0" / "manifest.json").read_text())
    pre = own["models"][TIMM_TINY]["card"]["preprocess"]
    assert own["dataset"]["fingerprint"]["kwargs"]["crop"] == pre["crop"] == 160
    code = run_cli(*base, "--out", str(tmp_path / "r1"), "--set", "data.kwargs.resize=256",
                   "--set", "data.kwargs.crop=224")
    assert code == 0, capsys.readouterr().err
    samples = pd.read_parquet(tmp_path / "r1" / "samples.parquet")
    assert sorted(set(samples["label"])) == [1, 207, 980]
    manifest = json.loads((tmp_path / "r1" / "manifest.json").read_text())
    assert manifest["dataset"]["classes"] == synsets
    card = manifest["models"][TIMM_TINY]["card"]
    assert card["input_size"] == [160, 160] and card["pretrained"] is True
    # 224 crops into a 160 model: allowed because the user resized on purpose (the card has its own size)
    summary = pd.read_parquet(tmp_path / "r1" / "summary.parquet")
    assert set(summary["status"]) == {"ok"} and (summary["n"] == 6).all()


def test_class_subset_without_card_names_is_refused(tmp_path: Path, capsys) -> None:
    """A project checkpoint trained on CIFAR-10 names; a folder with other names is an error naming both."""
    ckpt = _project_checkpoint(tmp_path)
    from PIL import Image

    for cls in ("cat", "zebra"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "f" / cls / "0.png")
    code = run_cli("sweep", "--model", str(ckpt), "--data", f"imagefolder:{tmp_path / 'f'}",
                   "--attack", "fgsm",
                   "--eps", "0", "--quiet", "--out", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 2 and "zebra" in err and "airplane" in err
    for cls in ("cat", "zebra"):
        (tmp_path / "g" / cls).mkdir(parents=True)
    (tmp_path / "g" / "zebra").rmdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "g" / "cat" / "0.png")
    code = run_cli("sweep", "--model", str(ckpt), "--data", f"imagefolder:{tmp_path / 'g'}",
                   "--attack", "fgsm",
                   "--eps", "0", "--quiet", "--out", str(tmp_path / "r2"))
    err = capsys.readouterr().err
    assert code == 2 and "64x64" in err and "32x32" in err


def _project_checkpoint(tmp_path: Path) -> Path:
    from robustbench_lta.models.registry import create_model
    from robustbench_lta.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=10, width=0.25)
    card = {"dataset": {"name": "cifar-like", "classes": CIFAR10_CLASSES, "input_size": [3, 32, 32]},
            "input_size": [3, 32, 32]}
    return save_checkpoint(model, tmp_path / "proj" / "best.safetensors", card)


def test_cli_sweep_zoo_timm_bare_and_checkpoint_side_by_side(tmp_path: Path, monkeypatch, capsys) -> None:
    from robustbench_lta.models.registry import create_model
    from robustbench_lta.sources.zoo import import_robustbench

    # RobustBench's layout with random weights for a small zoo model
    zoo, enums = import_robustbench()
    torch.manual_seed(1)
    board = zoo.model_dicts[enums.BenchmarkDataset("cifar10")][enums.ThreatModel("Linf")]
    net = board["Ding2020MMA"]["model"]()
    (tmp_path / "zoo" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "zoo" / "cifar10" / "Linf" / "Ding2020MMA.pt")
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(tmp_path / "zoo"))
    # no timm weights planted: an untrained timm model (ImageNet class names would not fit CIFAR)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from safetensors.torch import save_file

    torch.manual_seed(2)
    bare = tmp_path / "bare.safetensors"
    save_file(create_model("smallcnn", num_classes=10, width=0.25).state_dict(), str(bare))
    ckpt = _project_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    npz = tmp_path / "cifar-like.npz"
    np.savez(npz, x=rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), y=np.arange(12) % 10,
             classes=np.array(CIFAR10_CLASSES))
    out = tmp_path / "res"
    code = run_cli("sweep", "--model", "robustbench:cifar10/Linf/Ding2020MMA", "--model", f"timm:{TIMM_TINY}",
                   "--model", str(bare), "--arch", "smallcnn", "--model", str(ckpt), "--resize-inputs",
                   "--data", f"npz:{npz}", "--attack", "fgsm", "--attack", "pgd-linf:steps=2",
                   "--eps", "0,8", "--n", "12", "--quiet", "--out", str(out), "--set", "sanity_samples=0",
                   "--set", "attention_samples=0")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "published vs measured" in captured.out
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["status"]) == {"ok"}
    assert set(summary["model"]) == {"Ding2020MMA", TIMM_TINY, "bare", "smallcnn"}
    manifest = json.loads((out / "manifest.json").read_text())
    cards = {m: v["card"] for m, v in manifest["models"].items()}
    assert cards[TIMM_TINY]["input_resize"] == [160, 160] and cards[TIMM_TINY]["pretrained"] is False
    assert "width 0.25 inferred from the weights" in cards["bare"]["notes"]
    fingerprint = manifest["models"]["Ding2020MMA"]["fingerprint"]
    assert fingerprint["sha256"] == cards["Ding2020MMA"]["weights_sha256"]
    published = pd.read_csv(out / "published.csv")
    assert set(published["model"]) == {"Ding2020MMA"}
    clean = published[published["metric"] == "clean"].iloc[0]
    assert clean["published"] == pytest.approx(0.8436)
    measured = summary[summary["model"] == "Ding2020MMA"]["clean_acc"].iloc[0]
    assert clean["measured"] == pytest.approx(measured)
    robust = published[published["metric"] == "robust"]
    # (AutoAttack itself is left out: on random weights its Square stage runs all 5000 queries)
    assert set(robust["measured_by"]) == {"worst case over fgsm, pgd-linf"}
    assert robust["published"].iloc[0] == pytest.approx(0.4144)
    # the report shows the published numbers beside the measured ones
    from pypdf import PdfReader

    pdf = tmp_path / "report.pdf"
    assert run_cli("report", str(out), "--out", str(pdf)) == 0, capsys.readouterr().err
    text = "".join(page.extract_text() or "" for page in PdfReader(pdf).pages)
    assert "Published vs measured" in text and "84.4" in text
    assert (tmp_path / "report_files" / "published_vs_measured.csv").is_file()


def test_run_sweep_takes_cli_attack_strings_and_both_autoattacks() -> None:
    from robustbench_lta import run_sweep

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(16, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample clean-correct
    # a budget that APGD-CE alone exhausts, so the later stages (FAB, Square) have no survivors: fast
    summary = run_sweep({"lin": model}, ["pgd-linf:steps=3", "autoattack", "ta:AutoAttack:n_classes=4"],
                        eps=[0.5], data=(x, y), progress=False, sanity_samples=0, attention_samples=0)
    rows = summary[summary["attack"] != "worst-case"].set_index("attack")
    assert set(rows["status"]) == {"ok"}
    assert set(rows.index) == {"pgd-linf", "autoattack", "ta:AutoAttack"}
    assert rows.loc["autoattack", "robust_acc"] == rows.loc["ta:AutoAttack", "robust_acc"] == 0.0
