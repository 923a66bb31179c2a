"""The engine's one door for samples: any input becomes batches of float32 NCHW contiguous images.

A :class:`SampleSource` is an index over the evaluation samples plus a way to produce any subset of
them as batches on demand. Nothing is materialised as one float tensor: in-memory sources keep
what they were given (uint8 stays uint8 until the batch), datasets are read per batch through a
``DataLoader`` (with workers for on-disk data), and only one batch at a time reaches the device.
Whatever layout a caller hands in (a permuted NHWC view, channels_last, a non-contiguous slice),
every batch a model or plugin sees is float32, NCHW, contiguous, in [0,1], on the sweep's device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..config import DataSpec, SweepConfig
from ..data.registry import ImageDataset, load_dataset
from ..devices import module_device
from ..errors import UserError
from .models import LoadedModel, card_data_spec

_FINGERPRINT_PROBES = 8  # images hashed from a lazy dataset (first, last and evenly between)


def to_engine_layout(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """float32, NCHW, contiguous (standard strides), on ``device``: what every plugin receives."""
    if x.dtype == torch.uint8:
        x = x.to(device=device).float().div_(255.0) if device is not None else x.float().div_(255.0)
    else:
        x = x.to(device=device, dtype=torch.float32) if device is not None else x.float()
    return x.contiguous(memory_format=torch.contiguous_format)


def _check_range(x: torch.Tensor, where: str) -> None:
    if x.ndim != 4:
        raise UserError(f"{where}: images must be (N,C,H,W), got shape {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise UserError(f"input images must be in [0,1] (found values in [{lo:.3g}, {hi:.3g}] {where}): "
                        "pass unnormalised images and put the normalisation inside the model")


def _hash_tensors(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class SampleSource:
    """The evaluation samples: labels, dataset indices and class names known up front, images on demand.

    ``labels`` may be ``None`` for a lazy dataset without a ``targets`` attribute: units then read
    each label with its image.
    """

    name: str
    n: int
    classes: list[str]
    index: np.ndarray                 # dataset index of each sample position
    fingerprint: dict[str, Any]
    boxes: np.ndarray | None = None   # (n, 4) float32 object boxes, where the dataset has them
    labels: np.ndarray | None = None  # (n,) int64
    _x: torch.Tensor | None = field(default=None, repr=False)        # in-memory images
    _y: torch.Tensor | None = field(default=None, repr=False)
    _dataset: Dataset | None = field(default=None, repr=False)       # lazy images
    num_workers: int = 0
    collate_fn: Any = None

    @property
    def in_memory(self) -> bool:
        return self._x is not None

    def shard_sha256(self, start: int, stop: int) -> str | None:
        """Content hash of sample positions ``start..stop-1`` (images and labels), for in-memory
        samples; None for a lazy source (its fingerprint already samples a few probe images).
        ``shard_sha256(0, n)`` is the in-memory fingerprint's own ``sha256``."""
        if self._x is None or self._y is None:
            return None
        return _hash_tensors(self._x[start:stop], self._y[start:stop])

    def batches(self, positions: np.ndarray, batch_size: int, device: torch.device
                ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``(positions, x, y)`` batches of the given sample positions, in the given order."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._x is not None:
            for start in range(0, len(positions), batch_size):
                pos = positions[start:start + batch_size]
                sel = torch.as_tensor(pos)
                x = to_engine_layout(self._x[sel], device)
                yield pos, x, self._y[sel].to(device)
            return
        loader = DataLoader(Subset(self._dataset, self.index[positions].tolist()), batch_size=batch_size,
                            shuffle=False, num_workers=self.num_workers, collate_fn=self.collate_fn,
                            pin_memory=device.type == "cuda")
        start = 0
        for xb, yb in _checked(loader):
            pos = positions[start:start + len(xb)]
            start += len(xb)
            x = to_engine_layout(torch.as_tensor(xb), device)
            _check_range(x, f"in the batch of samples {int(pos[0])}..{int(pos[-1])}")
            yield pos, x, torch.as_tensor(yb).long().to(device)


#: largest decoded shard kept in memory for one unit (beyond it the shard streams once per budget)
SHARD_CACHE_BYTES = 512 * 2**20


class ShardSource:
    """One unit's shard of a lazy source, decoded once: a unit reads its images once per budget.

    Everything but :meth:`batches` is the wrapped source's. :func:`shard_view` decides when to use it.
    """

    def __init__(self, source: SampleSource, start: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self._source, self._start, self._x, self._y = source, start, x, y

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    @property
    def in_memory(self) -> bool:
        return True

    def batches(self, positions: np.ndarray, batch_size: int, device: torch.device
                ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        positions = np.asarray(positions, dtype=np.int64)
        for start in range(0, len(positions), batch_size):
            pos = positions[start:start + batch_size]
            sel = torch.as_tensor(pos - self._start)
            yield pos, to_engine_layout(self._x[sel], device), self._y[sel].to(device)


def shard_view(source: SampleSource, start: int, stop: int, batch_size: int,
               budget_bytes: int | None = None) -> SampleSource | ShardSource:
    """``source`` itself when in memory; else positions ``[start, stop)`` decoded once into memory
    when they fit ``budget_bytes`` (judged on the first batch), else ``source`` (streamed per budget)."""
    budget = SHARD_CACHE_BYTES if budget_bytes is None else budget_bytes
    if source.in_memory or stop <= start:
        return source
    xs, ys = [], []
    for _pos, x, y in source.batches(np.arange(start, stop), batch_size, torch.device("cpu")):
        if not xs and x.element_size() * x[0].numel() * (stop - start) > budget:
            return source  # too large to hold: one batch decoded for nothing, the rest streams
        xs.append(x.contiguous())
        ys.append(y)
    return ShardSource(source, start, torch.cat(xs), torch.cat(ys))


def _checked(loader: DataLoader) -> Iterator[Any]:
    try:
        yield from loader
    except RuntimeError as exc:
        if "stack expects each tensor to be equal size" in str(exc):
            raise UserError("the dataset's images differ in size: give a resize and crop (e.g. "
                            "--data imagefolder:PATH with kwargs resize: 256, crop: 224)") from None
        raise


# ---------------------------------------------------------------------------------- construction
def from_tensors(x: torch.Tensor, y: torch.Tensor, n: int | None, classes: Sequence[str] | None,
                 name: str = "tensors") -> SampleSource:
    """An ``(x, y)`` pair in any layout (a permuted NHWC view is fine); uint8 images are /255."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"images must be a (N,C,H,W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"images must be (N,C,H,W) with one label each; got {tuple(x.shape)} images "
                        f"and {tuple(y.shape)} labels")
    count = len(x) if n is None else min(n, len(x))
    x, y = x[:count].detach().cpu(), y[:count].long().cpu()
    if x.dtype != torch.uint8:
        _check_range(x.float(), "in the tensor given as data")
    if classes is None:
        raise ValueError("classes must be resolved before building a tensor source")
    return SampleSource(name=name, n=count, classes=[str(c) for c in classes], index=np.arange(count),
                        fingerprint={"name": name, "n": count, "sha256": _hash_tensors(
                            to_engine_layout(x), y)},
                        labels=y.numpy().astype(np.int64), _x=x, _y=y)


def from_image_dataset(ds: ImageDataset, n: int | None, fingerprint: dict[str, Any] | None = None,
                       content_sha256: str | None = None) -> SampleSource:
    """A registry dataset (uint8 in memory): images stay uint8 until the batch.

    ``content_sha256``: the content hash the driver already computed (a Ray worker), taken as given;
    the worker then checks only the shards it runs (:meth:`SampleSource.shard_sha256`).
    """
    count = len(ds) if n is None else min(n, len(ds))
    images, labels = ds.images[:count], ds.labels[:count]
    boxes = ds.boxes[:count].numpy().astype(np.float32) if getattr(ds, "boxes", None) is not None else None
    fp = dict(fingerprint or {"name": str(ds.name)})
    fp.update({"n": count, "sha256": content_sha256 or _hash_tensors(images, labels)})
    return SampleSource(name=str(ds.name), n=count, classes=list(ds.classes), index=np.arange(count),
                        fingerprint=fp, boxes=boxes, labels=labels.numpy().astype(np.int64),
                        _x=images, _y=labels)


def _dataset_labels(ds: Dataset, count: int) -> np.ndarray | None:
    for attr in ("targets", "labels"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) >= count:
            return np.asarray(values[:count] if not isinstance(values, torch.Tensor)
                              else values[:count].numpy(), dtype=np.int64)
    return None


def from_dataset(data: Dataset | DataLoader, n: int | None, classes: Sequence[str] | None
                 ) -> SampleSource:
    """A map-style ``Dataset`` or a ``DataLoader`` over one: read lazily, one batch at a time."""
    loader = data if isinstance(data, DataLoader) else None
    ds = loader.dataset if loader is not None else data
    if isinstance(ds, ImageDataset):
        return from_image_dataset(ds, n)
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
        return _collect_iterable(loader or DataLoader(ds, batch_size=256), n, classes)
    count = len(ds) if n is None else min(n, len(ds))
    if count == 0:
        raise UserError("the dataset given to run_sweep is empty")
    probes = sorted({int(i) for i in np.linspace(0, count - 1, min(count, _FINGERPRINT_PROBES))})
    items = [ds[i] for i in probes]
    sample = torch.as_tensor(items[0][0])
    if sample.ndim != 3:
        raise UserError(f"dataset items must be (image (C,H,W), label) pairs; got an image of shape "
                        f"{tuple(sample.shape)}")
    labels = _dataset_labels(ds, count)
    names = classes or getattr(ds, "classes", None)
    fp = {"name": type(ds).__name__, "n": count, "probes": probes,
          "sha256": _hash_tensors(*[torch.as_tensor(x) for x, _ in items],
                                  torch.as_tensor([int(y) for _, y in items]))}
    if labels is not None:
        fp["labels_sha256"] = _hash_tensors(torch.as_tensor(labels))
    return SampleSource(
        name=type(ds).__name__, n=count, classes=[str(c) for c in names] if names else [],
        index=np.arange(count), fingerprint=fp, labels=labels, _dataset=ds,
        num_workers=loader.num_workers if loader is not None else 0,
        collate_fn=loader.collate_fn if loader is not None else None)


def _collect_iterable(loader: DataLoader, n: int | None, classes: Sequence[str] | None) -> SampleSource:
    """An iterable dataset cannot be indexed: its first ``n`` samples are collected into memory."""
    xs, ys, total = [], [], 0
    for xb, yb in loader:
        xs.append(torch.as_tensor(xb))
        ys.append(torch.as_tensor(yb).long())
        total += len(xb)
        if n is not None and total >= n:
            break
    if not xs:
        raise UserError("the dataset given to run_sweep is empty")
    names = classes or getattr(loader.dataset, "classes", None)
    return from_tensors(torch.cat(xs), torch.cat(ys), n, names, name=type(loader.dataset).__name__)


# ---------------------------------------------------------------------------------- from a sweep config
def _data_fingerprint_base(spec: DataSpec) -> dict[str, Any]:
    """The content-relevant part of a dataset spec: never its location on disk."""
    name = spec.name.split(":", 1)[0] if ":" in spec.name else spec.name
    return {"name": name, "kwargs": spec.kwargs, "split": "test"}


def _output_width(module: nn.Module, x: torch.Tensor) -> int:
    """Outputs of ``module`` on the probe ``x``, run where the module lives: a caller may hand
    run_sweep a module already on the GPU, and a CPU probe would crash it."""
    module.eval()
    with torch.inference_mode():
        return int(module(x.to(device=module_device(module), dtype=torch.float32)).shape[1])


def _check_cards(models: list[LoadedModel], classes: Sequence[str], size: tuple[int, int], data: str,
                 resized: bool) -> None:
    """Class names and input size against each model's card: a mismatch names both sides."""
    from ..sources import check_data_against_card

    for lm in models:
        if lm.card and "class_names" in lm.card:
            check_data_against_card(classes, size, lm.card, model=lm.label, data=data, resized=resized)


def resolve_source(cfg: SweepConfig, data: Any, models: list[LoadedModel],
                   classes: Sequence[str] | None, content_sha256: str | None = None) -> SampleSource:
    """The sweep's samples. ``content_sha256``: a registry dataset's content hash as the driver
    computed it (Ray workers pass it, so only the driver hashes the whole dataset)."""
    if data is None:
        spec = cfg.data or card_data_spec(models[0].card)
        if spec is None:
            raise UserError("no dataset given and the first model's card names none: pass --data NAME")
        kwargs = dict(spec.kwargs)
        card_classes = (models[0].card or {}).get("class_names")
        if spec.name.startswith("imagefolder:") and card_classes and "classes" not in kwargs:
            kwargs["classes"] = card_classes  # a folder of some classes keeps the card's label indices
        from_card: dict[str, Any] = {}
        if spec.name.startswith("imagefolder:") and not {"resize", "crop"} & set(kwargs):
            # an image folder gets the first model's own preprocessing (its library's resize, crop and
            # interpolation) unless the config sets its own
            from ..sources import card_preprocess_kwargs

            from_card = card_preprocess_kwargs(models[0].card)
            kwargs.update(from_card)
        resized = bool(kwargs.get("resize") or kwargs.get("crop"))
        if spec.name.startswith("imagefolder:"):  # on disk: decoded batch by batch, never all at once
            from ..data.streaming import ImageFolderStream

            keep = {k: v for k, v in kwargs.items() if k in ("order", "resize", "crop", "classes",
                                                             "interpolation")}
            stream = ImageFolderStream(spec.name.split(":", 1)[1], split="test", n=cfg.n, **keep)
            _check_cards(models, stream.classes, stream.image_size, spec.name, resized)
            source = from_dataset(stream, cfg.n, stream.classes)
            source.num_workers = min(4, os.cpu_count() or 1)
            source.name = stream.name
            base = _data_fingerprint_base(spec)
            if from_card:  # the images are what the preprocessing makes of the files
                base["kwargs"] = {**base["kwargs"], **from_card}
            source.fingerprint = {**base, **source.fingerprint, "name": "imagefolder"}
            return source
        ds = load_dataset(spec.name, split="test", root=spec.root, download=spec.download, n=cfg.n, **kwargs)
        _check_cards(models, ds.classes, ds.image_size, spec.name, resized)
        return from_image_dataset(ds, cfg.n, _data_fingerprint_base(spec), content_sha256)
    if isinstance(data, SampleSource):
        return data
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if classes is None:
            classes = [str(c) for c in range(_output_width(models[0].module, x[:1].cpu()))]
        return from_tensors(x, y, cfg.n, classes)
    if isinstance(data, torch.utils.data.DataLoader | torch.utils.data.Dataset):
        source = from_dataset(data, cfg.n, classes)
        if not source.classes:
            first = source._dataset[0][0] if source._dataset is not None else None
            width = _output_width(models[0].module, torch.as_tensor(first)[None]) if first is not None else 0
            source.classes = [str(c) for c in range(width)]
        return source
    raise UserError(f"data must be a Dataset, a DataLoader or an (x, y) pair of tensors, "
                    f"not {type(data).__name__}")
