"""Model sources: every loader runs its real code offline, on random weights planted where each
library looks for them (RobustBench's model folder, the Hugging Face cache timm reads, a Hub-style
folder), plus bare state dicts, the restricted .pt loader and the data-vs-card checks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_lta.errors import UserError
from robustbench_lta.sources import check_data_against_card, resolve_model_source

timm = pytest.importorskip("timm")

TIMM_TINY = "test_efficientnet"  # 0.36M parameters, a timm test model with an ImageNet config


def _plant_hf(cache: Path, repo: str, files: dict[str, bytes | Path]) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: refs/main -> snapshots/<rev>/."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        (snap / name).write_bytes(data)
    return snap


def _random_timm_state(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ------------------------------------------------------------------------------------------- timm
def test_timm_pretrained_from_planted_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    state = _random_timm_state(TIMM_TINY)
    repo = timm.models.get_pretrained_cfg(TIMM_TINY).hf_hub_id
    weights = _save_safetensors(state, tmp_path / "w" / "model.safetensors")
    _plant_hf(tmp_path / "hub", repo, {"model.safetensors": weights})
    r = resolve_model_source(f"timm:{TIMM_TINY}")
    card = r.card
    assert card.pretrained and card.weights_file and "snapshots" in card.weights_file
    assert card.input_size == (160, 160) and card.num_classes == 1000
    assert card.mean == pytest.approx((0.485, 0.456, 0.406))
    assert card.std == pytest.approx((0.229, 0.224, 0.225))
    assert card.preprocess["crop"] == 160 and card.preprocess["resize"] == 182  # floor(160 / 0.875)
    assert card.class_names is not None and card.class_names[0] == "n01440764"
    from robustbench_lta.utils import sha256_file

    assert card.weights_sha256 == sha256_file(weights)
    # the wrapped module = the planted weights behind the library's normalisation
    net = timm.create_model(TIMM_TINY, pretrained=False)
    net.load_state_dict(state)
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(r.module.eval()(x), net((x - mean) / std), atol=1e-5)


def test_timm_without_weights_is_untrained_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.warns(UserWarning, match=r"UNTRAINED.*model.safetensors"):
        r = resolve_model_source(f"timm:{TIMM_TINY}")
    assert not r.card.pretrained and r.card.class_names is None
    assert str(tmp_path / "empty") in " ".join(r.card.notes) or r.card.weights_file is None
    with pytest.raises(UserError, match="did you mean"):
        resolve_model_source("timm:test_efficientnt")


# ------------------------------------------------------------------------------------------ hf-hub
def test_hf_hub_timm_layout_from_cache_and_local_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    state = _random_timm_state(TIMM_TINY, seed=2)
    weights = _save_safetensors(state, tmp_path / "w" / "model.safetensors")
    config = {"architecture": TIMM_TINY, "num_classes": 1000,
              "pretrained_cfg": {"input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5],
                                 "std": [0.25, 0.25, 0.25], "crop_pct": 1.0}}
    snap = _plant_hf(tmp_path / "hub", "someone/tiny-net",
                     {"model.safetensors": weights, "config.json": json.dumps(config).encode()})
    for source in ("hf-hub:someone/tiny-net", f"hf-hub:{snap}"):
        r = resolve_model_source(source)
        assert r.card.architecture == f"timm:{TIMM_TINY}"
        assert r.card.input_size == (96, 96) and r.card.mean == pytest.approx((0.5, 0.5, 0.5))
        sd = r.module.net.state_dict()
        assert all(torch.equal(sd[k], state[k]) for k in state)
    with pytest.raises(UserError, match=r"model.safetensors not found at .*models--someone--absent"):
        resolve_model_source("hf-hub:someone/absent")
    _plant_hf(tmp_path / "hub", "someone/pickled", {"pytorch_model.bin": b"not read"})
    with pytest.raises(UserError, match="safetensors only"):
        resolve_model_source("hf-hub:someone/pickled")


# ------------------------------------------------------------------------------------- robustbench
@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RobustBench's layout: <dir>/cifar10/Linf/Ding2020MMA.pt (a WRN-28-4 with random weights),
    saved like the zoo's files: {'state_dict': ...} with DataParallel's 'module.' prefix."""
    from robustbench_lta.sources.zoo import import_robustbench

    zoo, enums = import_robustbench()
    torch.manual_seed(3)
    board = zoo.model_dicts[enums.BenchmarkDataset("cifar10")][enums.ThreatModel("Linf")]
    net = board["Ding2020MMA"]["model"]()
    root = tmp_path_factory.mktemp("zoo")
    path = root / "cifar10" / "Linf" / "Ding2020MMA.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return root


def test_robustbench_planted_weights_and_published_numbers(zoo_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(zoo_dir))
    r = resolve_model_source("robustbench:cifar10/Linf/Ding2020MMA")
    card = r.card.as_dict()
    assert card["published"]["clean_acc"] == pytest.approx(0.8436)
    assert card["published"]["robust_acc"] == pytest.approx(0.4144)
    assert card["published"]["eps"] == pytest.approx(8 / 255) and card["published"]["norm"] == "linf"
    assert card["input_size"] == [32, 32] and card["num_classes"] == 10
    assert card["class_names"][0] == "airplane"
    assert card["dataset"] == {"name": "cifar10"}
    saved = torch.load(zoo_dir / "cifar10/Linf/Ding2020MMA.pt", weights_only=True)["state_dict"]
    got = r.module.net.state_dict()
    assert all(torch.equal(got[k[len("module."):]], v) for k, v in saved.items())
    # a user's model_info checkout takes precedence over the bundled snapshot
    info = zoo_dir / "info" / "cifar10" / "Linf"
    info.mkdir(parents=True)
    (info / "Ding2020MMA.json").write_text(json.dumps({"clean_acc": "50.0", "autoattack_acc": "25.5",
                                                       "eps": "8/255"}))
    monkeypatch.setenv("ROBUSTBENCH_MODEL_INFO", str(zoo_dir / "info"))
    assert resolve_model_source("robustbench:cifar10/Linf/Ding2020MMA").card.published.robust_acc == 0.255


def test_robustbench_missing_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"Standard.pt.*--download"):
        resolve_model_source("robustbench:cifar10/Linf/Standard")
    with pytest.raises(UserError, match="did you mean Standard"):
        resolve_model_source("robustbench:cifar10/Linf/Standrd")
    with pytest.raises(UserError, match="Linf or L2"):
        resolve_model_source("robustbench:cifar10/corruptions/Standard")


class _Payload:
    def __reduce__(self):  # would run code if unpickled freely
        return (print, ("unpickled!",))


def test_pt_files_need_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MODEL_DIR", str(tmp_path))
    bad = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    bad.parent.mkdir(parents=True)
    with open(bad, "wb") as fh:
        pickle.dump({"state_dict": _Payload()}, fh)
    with pytest.raises(UserError, match="weights_only=True"):
        resolve_model_source("robustbench:cifar10/Linf/Standard")
    with pytest.raises(UserError, match="weights_only=True"):
        resolve_model_source(str(bad), arch="smallcnn")


# --------------------------------------------------------------------------------- bare state dicts
def test_bare_state_dict_with_arch(tmp_path: Path) -> None:
    from robustbench_lta.models.registry import create_model

    torch.manual_seed(4)
    model = create_model("smallcnn", num_classes=7, width=0.25)
    st = _save_safetensors(model.state_dict(), tmp_path / "mine.safetensors")
    with pytest.raises(UserError, match="--arch"):
        resolve_model_source(str(st))
    r = resolve_model_source(str(st), arch="smallcnn", width=0.25)
    assert r.card.num_classes == 7 and r.card.architecture == "smallcnn"  # classes inferred from the head
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(r.module.eval()(x), model.eval()(x))
    with pytest.raises(UserError, match="does not fit --arch smallcnn"):
        resolve_model_source(str(st), arch="smallcnn", width=0.5)
    with pytest.raises(UserError, match="did you mean"):
        resolve_model_source(str(st), arch="smalcnn")
    pt = tmp_path / "mine.pt"
    torch.save(model.state_dict(), pt)
    assert resolve_model_source(str(pt), arch="smallcnn", width=0.25).card.num_classes == 7
    # timm architecture: strict load, preprocessing from timm's config
    tstate = _random_timm_state(TIMM_TINY, seed=5)
    tfile = _save_safetensors(tstate, tmp_path / "t.safetensors")
    rt = resolve_model_source(str(tfile), arch=f"timm:{TIMM_TINY}")
    assert rt.card.input_size == (160, 160) and rt.card.num_classes == 1000
    assert torch.equal(rt.module.net.state_dict()["conv_stem.weight"], tstate["conv_stem.weight"])


def test_resize_inputs_wraps_model(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        r = resolve_model_source(f"timm:{TIMM_TINY}", resize_inputs=True)
    assert r.card.input_resize == (160, 160) and "input_resize" in r.fingerprint
    seen = []
    r.module.net.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    with torch.no_grad():
        r.module.eval()(torch.rand(1, 3, 32, 32))
    assert seen == [(160, 160)]


# ------------------------------------------------------------------------------------- data checks
def test_check_data_against_card() -> None:
    card = {"source": "m", "class_names": ["a", "b", "c", "d"], "num_classes": 4, "input_size": [32, 32],
            "preprocess": {}}
    check_data_against_card(["a", "b", "c", "d"], (32, 32), card)
    check_data_against_card(None, None, card)
    with pytest.raises(UserError, match=r"data label 0 \('b'\) is the card's class 1.*card: a, b, c, d"):
        check_data_against_card(["b", "d"], (32, 32), card)
    with pytest.raises(UserError, match="'z'.*not among"):
        check_data_against_card(["a", "z"], (32, 32), card)
    with pytest.raises(UserError, match="64x64 images but .* expects 32x32"):
        check_data_against_card(["a", "b", "c", "d"], (64, 64), card)
    with pytest.warns(UserWarning, match="resized"):
        check_data_against_card(["a", "b", "c", "d"], (64, 64), card, resized=True)


def _folder(root: Path, classes: list[str], sizes: list[tuple[int, int]], per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    k = 0
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[k % len(sizes)]
            k += 1
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_imagefolder_resize_crop_and_card_classes(tmp_path: Path) -> None:
    from robustbench_lta.data.registry import load_dataset

    root = _folder(tmp_path / "val", ["n3", "n1", "n7"], [(300, 260), (280, 400), (500, 375)])
    with pytest.raises(UserError, match="differ in size.*resize="):
        load_dataset(f"imagefolder:{root}")
    ds = load_dataset(f"imagefolder:{root}", resize=256, crop=224)
    assert ds.image_size == (224, 224) and len(ds) == 6 and ds.classes == ["n1", "n3", "n7"]
    card_classes = [f"n{i}" for i in range(10)]
    sub = load_dataset(f"imagefolder:{root}", resize=256, crop=224, classes=card_classes)
    assert sub.classes == card_classes
    assert sorted(set(sub.labels.tolist())) == [1, 3, 7]  # the card's indices, not 0..2
    with pytest.raises(UserError, match="not among the given classes"):
        load_dataset(f"imagefolder:{root}", classes=["n1", "n3"])
