"""Tests for the data layer: ImageDataset, the registry, cluttered-digits, and the file loaders."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_lta.data import (
    ImageDataset,
    dataset_available,
    list_datasets,
    load_dataset,
    register_dataset,
    registry,
    shared_data_dir,
)
from robustbench_lta.data import cluttered_digits as cd
from robustbench_lta.errors import UserError


# ------------------------------------------------------------------------------ cluttered-digits
def test_cluttered_digits_shapes_dtypes_range() -> None:
    ds = load_dataset("cluttered-digits", split="train", n=200)
    assert len(ds) == 200
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (200, 3, 32, 32)
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (200,)
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) <= 9
    assert ds.boxes is not None and ds.boxes.dtype == torch.float32 and ds.boxes.shape == (200, 4)
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.name == "cluttered-digits" and ds.num_classes == 10 and ds.image_size == (32, 32)
    assert ds.mean == cd.MEAN and ds.std == cd.STD
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and x.shape == (200, 3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    assert torch.equal(y, ds.labels)
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(img, x[3]) and label == int(y[3])


def test_cluttered_digits_deterministic_and_seeded() -> None:
    a = load_dataset("cluttered-digits", split="test", n=300, seed=0)
    b = load_dataset("cluttered-digits", split="test", n=300, seed=0)
    c = load_dataset("cluttered-digits", split="test", n=300, seed=1)
    t = load_dataset("cluttered-digits", split="train", n=300, seed=0)
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert torch.equal(a.labels, b.labels) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, t.images)


def test_cluttered_digits_prefix_does_not_depend_on_n() -> None:
    small = load_dataset("cluttered-digits", split="train", n=50)
    large = load_dataset("cluttered-digits", split="train", n=cd.CHUNK + 200)
    assert len(large) == cd.CHUNK + 200
    assert torch.equal(small.images, large.images[:50])
    assert torch.equal(small.boxes, large.boxes[:50])


def test_cluttered_digits_default_sizes_and_kwargs() -> None:
    assert len(load_dataset("cluttered-digits", split="test", n_test=120)) == 120
    assert len(load_dataset("cluttered-digits", split="train", n_train=80)) == 80
    with pytest.raises(UserError, match="n_fragmentz"):
        load_dataset("cluttered-digits", n=10, n_fragmentz=3)
    with pytest.raises(UserError, match="split"):
        load_dataset("cluttered-digits", split="validation", n=10)
    with pytest.raises(UserError, match="digit_size"):
        load_dataset("cluttered-digits", n=10, digit_size=(12, 40))


def test_cluttered_digits_train_test_sources_disjoint() -> None:
    train_src, test_src = cd.source_indices("train"), cd.source_indices("test")
    assert set(train_src).isdisjoint(test_src)
    assert len(train_src) + len(test_src) == 1797
    assert 0.65 < len(train_src) / 1797 < 0.75
    _, labels = cd._digits()
    per_class = np.bincount(labels[train_src], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(per_class - 0.7) < 0.02)  # stratified
    for split, allowed in (("train", train_src), ("test", test_src)):
        ds = load_dataset("cluttered-digits", split=split, n=400)
        assert ds.source_index is not None and ds.source_index.shape == (400,)
        assert set(ds.source_index.tolist()) <= set(allowed.tolist())
        assert set(ds.extras["fragment_source_index"].flatten().tolist()) <= set(allowed.tolist())
        assert np.array_equal(labels[ds.source_index], ds.labels.numpy())  # label = the digit's class


def test_cluttered_digits_boxes_are_tight_around_the_ink() -> None:
    ds = load_dataset("cluttered-digits", split="test", n=200, n_fragments=0, noise=0.0)
    boxes = ds.boxes.long()
    assert torch.all(boxes[:, :2] >= 0) and torch.all(boxes[:, 2:] <= 32)
    assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
    for i in range(len(ds)):
        img = ds.images[i].int()
        x0, y0, x1, y1 = boxes[i].tolist()
        ink = (img - img[:, 0:1, 0:1]).abs().amax(dim=0) > 0  # differs from the flat background
        inside = torch.zeros_like(ink)
        inside[y0:y1, x0:x1] = True
        assert not torch.any(ink & ~inside), f"ink outside the box in image {i}"
        region = ink[y0:y1, x0:x1]
        # tight: every border row and column of the box holds ink
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def test_cluttered_digits_box_region_brighter_with_clutter() -> None:
    ds = load_dataset("cluttered-digits", split="train", n=300)
    x, _ = ds.tensors()
    lum = x.amax(dim=1)
    inside_means, outside_means = [], []
    for i, (x0, y0, x1, y1) in enumerate(ds.boxes.long().tolist()):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        inside_means.append(float(lum[i][mask].mean()))
        outside_means.append(float(lum[i][~mask].mean()))
    inside, outside = np.array(inside_means), np.array(outside_means)
    assert np.mean(inside > outside) > 0.95
    assert inside.mean() - outside.mean() > 0.1


def test_cluttered_digits_class_balance() -> None:
    ds = load_dataset("cluttered-digits", split="train", n=3000)
    counts = np.bincount(ds.labels.numpy(), minlength=10)
    assert counts.min() > 240 and counts.max() < 360


def test_cluttered_digits_10k_generation_is_fast() -> None:
    load_dataset("cluttered-digits", n=10)  # warm the source-digit cache
    # CPU time of this process (all its threads), so other jobs on a shared machine don't count.
    start = time.process_time()
    ds = load_dataset("cluttered-digits", split="train", n=10000)
    elapsed = time.process_time() - start
    assert len(ds) == 10000
    # CPU time itself inflates when another job shares the cores' caches and hyperthreads (5.02 s
    # seen beside a training run against a 5 s bound): the bound guards the order of magnitude
    assert elapsed < 10.0, f"10k images took {elapsed:.1f}s"


# ------------------------------------------------------------------------ ImageDataset, registry
def _toy(n: int = 12) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[0.0, 0.0, float(i % 8 + 1), 4.0] for i in range(n)])
    return ImageDataset(
        images,
        torch.arange(n) % 3,
        classes=["a", "b", "c"],
        name="toy",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        boxes=boxes,
        extras={"source_index": torch.arange(n) * 10},
    )


def test_image_dataset_subset_tensors_and_validation() -> None:
    ds = _toy()
    sub = ds.subset([5, 2, 7])
    assert len(sub) == 3 and torch.equal(sub.images, ds.images[[5, 2, 7]])
    assert torch.equal(sub.labels, torch.tensor([2, 2, 1]))
    assert torch.equal(sub.boxes, ds.boxes[[5, 2, 7]])
    assert sub.source_index.tolist() == [50, 20, 70]
    assert sub.classes == ds.classes and sub.name == "toy" and sub.mean == ds.mean
    mask = ds.labels == 0
    assert len(ds.subset(mask)) == int(mask.sum())
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    x, y = ds.tensors(np.array([1, 3]))
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, ds.images[[1, 3]].float() / 255)
    assert y.tolist() == [1, 0]
    assert len(ds.subset(slice(0, 4))) == 4
    with pytest.raises(ValueError):
        ImageDataset(ds.images.float(), ds.labels, classes=ds.classes, name="x", mean=ds.mean, std=ds.std)
    with pytest.raises(ValueError):
        ImageDataset(ds.images, ds.labels + 5, classes=ds.classes, name="x", mean=ds.mean, std=ds.std)


def test_load_dataset_n_takes_first_n() -> None:
    full = load_dataset("cluttered-digits", split="test", n=100)
    part = load_dataset("cluttered-digits", split="test", n=30)
    assert torch.equal(part.images, full.images[:30])
    with pytest.raises(UserError, match="positive"):
        load_dataset("cluttered-digits", n=0)


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UserError) as info:
        load_dataset("cifar-10")
    message = str(info.value)
    assert "cifar10" in message and "cluttered-digits" in message and "imagefolder:PATH" in message
    assert "\n" not in message
    with pytest.raises(UserError):
        dataset_available("nope")


def test_list_datasets_and_availability(tmp_path: Path) -> None:
    infos = {info.name: info for info in list_datasets()}
    assert {"cluttered-digits", "cifar10", "cifar100", "svhn"} <= set(infos)
    digits = infos["cluttered-digits"]
    assert digits.has_boxes and digits.num_classes == 10 and digits.image_size == (32, 32)
    assert infos["cifar100"].num_classes == 100 and not infos["cifar10"].has_boxes
    assert dataset_available("cluttered-digits", root=tmp_path)
    for name in ("cifar10", "cifar100", "svhn"):
        assert not dataset_available(name, root=tmp_path)
    assert not dataset_available(f"npz:{tmp_path / 'missing.npz'}")


def test_register_custom_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_dataset(
        "toy", description="toy", num_classes=3, image_size=(8, 8), mean=(0.5,) * 3, std=(0.25,) * 3
    )
    def _load(split: str, root: Path, download: bool, n: int | None, seed: int) -> ImageDataset:
        return _toy()

    assert "toy" in {info.name for info in registry.list_datasets()}
    assert len(load_dataset("toy", n=5)) == 5
    with pytest.raises(ValueError):
        register_dataset(
            "bad:name", description="", num_classes=1, image_size=(1, 1), mean=(0,) * 3, std=(1,) * 3
        )


def test_interleave_by_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    order = registry.interleave_by_class(labels)
    assert sorted(order.tolist()) == list(range(9))
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 2]
    assert order.tolist()[:3] == [0, 3, 5]


def test_shared_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBUSTBENCH_LTA_SHARED", str(tmp_path))
    assert shared_data_dir() == tmp_path


# --------------------------------------------------------------------------------- torchvision
def test_cifar10_missing_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "download" in message and str(tmp_path) in message and "CIFAR-10" in message
    with pytest.raises(UserError, match="download"):
        load_dataset("svhn", root=tmp_path, split="test")


def test_default_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBUSTBENCH_LTA_DATA", str(tmp_path))
    assert registry.default_root() == tmp_path
    assert registry.default_root("elsewhere") == Path("elsewhere")


def test_cifar10_conversion_with_fake_torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.datasets

    from robustbench_lta.data import torchvision_sets

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR10:
        classes = torchvision_sets.CIFAR10_CLASSES

        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert Path(root) == tmp_path and not train and not download
            self.data, self.targets = data, [3, 1, 4, 1, 5, 9]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    for f in torchvision_sets._CIFAR10_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).touch()
    assert dataset_available("cifar10", root=tmp_path)
    ds = load_dataset("cifar10", root=tmp_path, n=4)
    assert ds.images.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.images.permute(0, 2, 3, 1).numpy(), data[:4])
    assert ds.labels.tolist() == [3, 1, 4, 1] and ds.classes[0] == "airplane"
    assert ds.mean == torchvision_sets.CIFAR10_MEAN


# ----------------------------------------------------------------------------- folders and npz
def _write_folder(root: Path, classes: dict[str, list[tuple[int, int, int]]], size: tuple[int, int] = (6, 5)):
    from PIL import Image

    for cls, colours in classes.items():
        (root / cls).mkdir(parents=True)
        for k, colour in enumerate(colours):
            Image.new("RGB", size, colour).save(root / cls / f"{k:03d}.png")


def test_imagefolder_loads_sorted_classes_interleaved(tmp_path: Path) -> None:
    _write_folder(
        tmp_path / "imgs",
        {
            "zebra": [(250, 0, 0), (240, 0, 0)],
            "ant": [(0, 10, 0), (0, 20, 0), (0, 30, 0)],
            "mole": [(1, 2, 3)],
        },
    )
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    assert ds.classes == ["ant", "mole", "zebra"]
    assert ds.images.shape == (6, 3, 5, 6) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 2, 0, 2, 0]
    assert ds.images[0, :, 0, 0].tolist() == [0, 10, 0]
    assert ds.images[2, :, 0, 0].tolist() == [250, 0, 0]
    assert ds.extras["file_index"].tolist() == [0, 3, 4, 1, 5, 2]
    expected_mean = ds.images.double().div(255).mean(dim=(0, 2, 3))
    assert np.allclose(ds.mean, expected_mean.numpy(), atol=1e-3)
    file_order = load_dataset(
        f"imagefolder:{tmp_path / 'imgs'}", order="file", mean=(0.5,) * 3, std=(0.2,) * 3
    )
    assert file_order.labels.tolist() == [0, 0, 0, 1, 2, 2] and file_order.mean == (0.5, 0.5, 0.5)
    assert len(load_dataset(f"imagefolder:{tmp_path / 'imgs'}", n=2)) == 2


def test_imagefolder_split_subfolders_and_errors(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d" / "train", {"a": [(1, 1, 1)] * 3, "b": [(2, 2, 2)] * 3})
    _write_folder(tmp_path / "d" / "test", {"a": [(1, 1, 1)], "b": [(2, 2, 2)]})
    assert len(load_dataset(f"imagefolder:{tmp_path / 'd'}", split="train")) == 6
    assert len(load_dataset(f"imagefolder:{tmp_path / 'd'}", split="test")) == 2
    (tmp_path / "d" / "test").rename(tmp_path / "d" / "held")
    with pytest.raises(UserError, match="test"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}", split="test")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    _write_folder(tmp_path / "mixed", {"a": [(1, 1, 1)]})
    _write_folder(tmp_path / "mixed_b", {"b": [(1, 1, 1)]}, size=(7, 7))
    (tmp_path / "mixed_b" / "b").rename(tmp_path / "mixed" / "b")
    with pytest.raises(UserError, match="resize"):
        load_dataset(f"imagefolder:{tmp_path / 'mixed'}")


def test_npz_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 4, 5, 3), dtype=np.uint8)
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.classes == ["cat", "dog", "eel"] and ds.images.shape == (8, 3, 4, 5)
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    idx = ds.extras["file_index"].numpy()
    assert np.array_equal(ds.images.permute(0, 2, 3, 1).numpy(), x[idx])
    assert len(load_dataset(f"npz:{tmp_path / 'd.npz'}", n=3)) == 3
    # grayscale NHW, no class names
    np.savez(tmp_path / "g.npz", x=x[..., 0], y=y)
    gray = load_dataset(f"npz:{tmp_path / 'g.npz'}", order="file")
    assert gray.classes == ["0", "1", "2"] and gray.images.shape == (8, 3, 4, 5)
    assert torch.equal(gray.images[:, 0], gray.images[:, 2])
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(UserError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "k.npz", images=x, y=y)
    with pytest.raises(UserError, match="'x'"):
        load_dataset(f"npz:{tmp_path / 'k.npz'}")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_shared_mini_npz() -> None:
    shared = shared_data_dir()
    if shared is None or not (shared / "mini.npz").is_file():
        pytest.skip("shared CIFAR-10 JPEG data (../shared/data/cifar10-jpeg/mini.npz) not present")
    ds = load_dataset(f"npz:{shared / 'mini.npz'}", n=200)
    assert len(ds) == 200 and ds.images.shape == (200, 3, 32, 32)
    assert ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(ds.labels.numpy(), minlength=10).tolist() == [20] * 10
    assert all(abs(m - c) < 0.05 for m, c in zip(ds.mean, (0.4914, 0.4822, 0.4465), strict=True))
