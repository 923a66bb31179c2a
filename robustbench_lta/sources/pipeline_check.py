"""Do this tool's preprocessing and a library's own transform give the same logits on image files?

Ours is what a sweep does with ``--data imagefolder:DIR`` and the card's preprocessing flags
(``check.preprocess_flags``): the image folder's Resize + CenterCrop on the decoded PIL image, uint8,
``/255`` (the engine's layout), then the resolved module (its normalisation inside). The library's is
timm's ``create_transform(**resolve_data_config({}, model=net))`` or torchvision's
``weights.transforms()``, fed to the bare network. Used by tests/test_zoo_preprocess.py and
``benchmarks/zoo_table.py --preprocess``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .card import ResolvedModel
from .check import card_preprocess_kwargs


def library_transform(resolved: ResolvedModel) -> Callable[[Any], torch.Tensor]:
    """The library's own eval transform for a resolved timm:/hf-hub: or torchvision: model."""
    arch = resolved.card.architecture
    if arch.startswith("timm:"):
        import timm.data

        net = resolved.module.net  # type: ignore[union-attr]
        return timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    if arch.startswith("torchvision:"):
        import torchvision.models as tvm

        name = resolved.card.source.split(":", 1)[1]
        base, _, tag = name.partition(".")
        enum = tvm.get_model_weights(base)
        return (enum[tag] if tag else enum.DEFAULT).transforms()
    raise ValueError(f"no library transform for {arch}")


def card_data_kwargs(resolved: ResolvedModel) -> dict[str, Any]:
    """The image-folder kwargs that give the data the card's preprocessing (what a sweep applies)."""
    return card_preprocess_kwargs(resolved.card)


def max_logit_difference(resolved: ResolvedModel, folder: Path, n: int | None = None,
                         batch: int = 8) -> tuple[float, int, list[int]]:
    """Largest |logit difference| between the library's pipeline and ours on the folder's images,
    the number of images, and the images' (H, W) after our preprocessing."""
    from PIL import Image

    from ..data.streaming import ImageFolderStream

    stream = ImageFolderStream(folder, n=n, **card_data_kwargs(resolved))
    tf = library_transform(resolved)
    module = resolved.module.eval()
    net = module.net  # type: ignore[union-attr]
    worst, count = 0.0, len(stream)
    for start in range(0, count, batch):
        idx: Sequence[int] = range(start, min(count, start + batch))
        ours = torch.stack([stream[i][0] for i in idx]).float().div_(255.0)  # as to_engine_layout
        theirs = torch.stack([tf(_rgb(stream.files[i], Image)) for i in idx])  # same files, same order
        with torch.no_grad():
            diff = (module(ours) - net(theirs)).abs().max().item()
        worst = max(worst, float(diff))
    return worst, count, list(stream.image_size)


def resized_inputs_difference(source: str, folder: Path, n: int | None = None) -> float:
    """The same comparison for ``--resize-inputs``: the folder's images as they are, resized inside the
    model (bilinear, whole image), against the library's transform: the gap the named alternative has."""
    from PIL import Image

    from ..data.streaming import ImageFolderStream
    from .resolve import resolve_model_source

    resolved = resolve_model_source(source, resize_inputs=True)
    stream = ImageFolderStream(folder, n=n)
    tf = library_transform(resolved)
    module = resolved.module.eval()
    worst = 0.0
    for i in range(len(stream)):
        ours = stream[i][0].unsqueeze(0).float().div_(255.0)
        theirs = tf(_rgb(stream.files[i], Image)).unsqueeze(0)
        with torch.no_grad():
            worst = max(worst, float((module(ours) - module.net(theirs)).abs().max()))  # type: ignore[operator]
    return worst


def _rgb(path: Path, image: Any) -> Any:
    with image.open(path) as im:
        return im.convert("RGB")
