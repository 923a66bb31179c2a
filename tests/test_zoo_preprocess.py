"""timm and torchvision models get their library's own preprocessing: the image folder's resize,
crop and interpolation from the card, then the normalisation inside the module, give the same
logits as the library's transform on the same image files (JPEGs of mixed sizes, made here)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from robustbench_lta.errors import UserError
from robustbench_lta.sources import check_data_against_card, resolve_model_source

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 JPEG files of mixed sizes and aspect ratios (smooth content, so resampling matters)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(300, 200), (180, 260), (500, 375), (224, 224), (97, 131), (640, 480)]):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([np.sin(xx / (7 + c) + yy / (11 + c)) for c in range(3)], -1) * 100 + 128
        img += rng.normal(0, 20, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"c{i % 2}" / f"{i}.jpg", quality=90)
    return root


@pytest.mark.parametrize("source", ["timm:test_efficientnet", "torchvision:mobilenet_v3_small"])
def test_logits_equal_the_library_transform(jpegs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            source: str) -> None:
    from robustbench_lta.sources.pipeline_check import max_logit_difference

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # no weights: untrained, seeded
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = resolve_model_source(source)
    pre = r.card.preprocess
    assert pre["exact"] and pre["interpolation"] in ("bicubic", "bilinear") and "origin" in pre
    worst, n, size = max_logit_difference(r, jpegs)
    assert n == 6 and size == list(r.card.input_size)
    assert worst == 0.0


def test_timm_card_follows_pretrained_cfg() -> None:
    """timm:resnet50's own config: 224 from floor(224 / 0.95) = 235, bicubic (not 256 / bilinear)."""
    import timm

    from robustbench_lta.sources.libs import timm_preprocess

    net = timm.create_model("resnet50", pretrained=False)
    pre = timm_preprocess(timm.data.resolve_data_config({}, model=net))
    assert (pre["resize"], pre["crop"], pre["interpolation"], pre["crop_pct"]) == (235, 224, "bicubic", 0.95)


def test_size_mismatch_advice_names_the_libraries_flags() -> None:
    card = {"source": "timm:resnet50", "class_names": None, "num_classes": 1000, "input_size": [224, 224],
            "preprocess": {"resize": 235, "crop": 224, "interpolation": "bicubic",
                           "origin": "timm.data.resolve_data_config + create_transform"}}
    with pytest.raises(UserError, match=r"--set data.kwargs.resize=235 --set data.kwargs.crop=224 "
                                        r"--set data.kwargs.interpolation=bicubic; or pass --resize-inputs"):
        check_data_against_card(None, (32, 32), card)


def test_a_sweep_on_an_image_folder_gets_the_models_own_preprocessing(
    jpegs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No data kwargs given: the folder is resized and cropped as the model's library does it, and the
    dataset fingerprint says so (another preprocessing is other data); kwargs given win."""
    import torch

    from robustbench_lta.config import SweepConfig, validate
    from robustbench_lta.engine.inputs import resolve_source
    from robustbench_lta.engine.models import load_sweep_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    raw = {"models": [{"name": "m", "source": "timm:test_efficientnet"}], "attacks": [{"name": "fgsm"}],
           "eps": [1], "n": 6, "data": {"name": f"imagefolder:{jpegs}"}}
    cfg = validate(SweepConfig, raw, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_sweep_model(cfg.models[0], "m", 0)
    pre = {k: lm.card["preprocess"][k] for k in ("resize", "crop", "interpolation")}
    source = resolve_source(cfg, None, [lm], None)
    _pos, x, _y = next(source.batches(np.arange(6), 6, torch.device("cpu")))
    assert list(x.shape[-2:]) == list(lm.card["input_size"])
    assert {k: source.fingerprint["kwargs"][k] for k in pre} == pre
    own = validate(SweepConfig, {**raw, "data": {"name": f"imagefolder:{jpegs}",
                                                 "kwargs": {"resize": 140, "crop": 128}}}, "test")
    with pytest.warns(UserWarning, match="128x128 images but model 'm' expects"):  # as asked, said
        mine = resolve_source(own, None, [lm], None)
    _pos, x, _y = next(mine.batches(np.arange(6), 6, torch.device("cpu")))
    assert list(x.shape[-2:]) == [128, 128] and mine.fingerprint["kwargs"] == {"resize": 140, "crop": 128}
