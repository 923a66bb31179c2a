"""Does the data fit the model? Class names and input size, checked against the model card.

A dataset label ``i`` means class ``dataset_classes[i]``; the model's output ``i`` means
``card.class_names[i]``. They must agree for every label the data uses, or accuracy is silently
wrong (a folder holding classes 3, 5 and 7 relabelled 0, 1, 2 scores 0 %). Images of another size
than the card's are refused unless the user resized them on purpose.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UserError
from .card import ModelCard


def _field(card: ModelCard | Mapping[str, Any], key: str) -> Any:
    return card.get(key) if isinstance(card, Mapping) else getattr(card, key, None)


def check_data_against_card(dataset_classes: Sequence[str] | None, input_size: Sequence[int] | None,
                            card: ModelCard | Mapping[str, Any], *, resized: bool = False,
                            model: str | None = None, data: str | None = None) -> None:
    """Raise UserError naming both sides when the data's classes or image size do not fit ``card``.

    ``dataset_classes`` None (unknown names, e.g. bare tensors) skips the name check;
    ``input_size`` is ``(H, W)``; ``resized`` says the user asked for a resize/crop.
    """
    who = f"model {model!r}" if model else f"model {_field(card, 'source')}"
    what = f"data {data!r}" if data else "the data"
    names = _field(card, "class_names")
    k = int(_field(card, "num_classes") or 0)
    if dataset_classes is not None:
        ds = [str(c) for c in dataset_classes]
        if k and len(ds) > k:
            raise UserError(f"{what} has {len(ds)} classes but {who} has {k} outputs: attack it on data "
                            "with the classes it was trained for")
        if names:
            bad = [(i, c) for i, c in enumerate(ds) if i >= len(names) or names[i] != c]
            if bad:
                i, c = bad[0]
                where = (f"is the card's class {names.index(c)}" if c in names
                         else "is not among the card's classes")
                card_side = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                data_side = ", ".join(ds[:12]) + (", ..." if len(ds) > 12 else "")
                raise UserError(
                    f"the classes of {what} do not match the card of {who}: data label {i} ({c!r}) {where} "
                    f"(data: {data_side}; card: {card_side}); for an image folder holding some of the "
                    "card's classes, load it with the card's class list (classes=...) so labels keep "
                    "the card's indices")
    size = _field(card, "input_size")
    if _field(card, "input_resize"):  # the model resizes its inputs itself
        size = None
    if size and input_size is not None and tuple(int(v) for v in input_size) != tuple(int(v) for v in size):
        h, w = (int(v) for v in input_size)
        msg = f"{what} has {h}x{w} images but {who} expects {size[0]}x{size[1]} (its card)"
        if not resized:
            raise UserError(f"{msg}: {preprocess_advice(card, size)}")
        warnings.warn(f"{msg}; evaluated at the resized size as asked", stacklevel=2)


def card_preprocess_kwargs(card: ModelCard | Mapping[str, Any] | None) -> dict[str, Any]:
    """The image-folder kwargs (resize, crop, interpolation) of the model's own preprocessing, as its
    library's transform does it (timm's pretrained_cfg, torchvision's ``weights.transforms()``,
    RobustBench's ImageNet list); empty when the card names none or the model resizes inside itself
    (``--resize-inputs``)."""
    if card is None or _field(card, "input_resize"):
        return {}
    pre = _field(card, "preprocess") or {}
    return {k: pre[k] for k in ("resize", "crop", "interpolation") if pre.get(k) is not None}


def preprocess_flags(card: ModelCard | Mapping[str, Any], size: Sequence[int] | None = None) -> str:
    """The ``--set data.kwargs...`` flags that give an image folder the model's own preprocessing."""
    pre = _field(card, "preprocess") or {}
    size = size or _field(card, "input_size") or ()
    flags = []
    for key in ("resize", "crop", "interpolation"):
        value = pre.get(key)
        if value is None:
            continue
        text = f"[{','.join(str(int(v)) for v in value)}]" if isinstance(value, list | tuple) else str(value)
        flags.append(f"--set data.kwargs.{key}={text}")
    if not flags and size:
        flags.append(f"--set data.kwargs.resize={int(size[0])}")
    return " ".join(flags)


def preprocess_advice(card: ModelCard | Mapping[str, Any], size: Sequence[int] | None = None) -> str:
    """How to give the data the model's own preprocessing, or resize inside the model instead."""
    pre = _field(card, "preprocess") or {}
    origin = f" ({pre['origin']})" if pre.get("origin") else ""
    return (f"give an image folder the model's own preprocessing{origin}: {preprocess_flags(card, size)}; "
            "or pass --resize-inputs to resize the given images inside the model (bilinear, whole image, "
            "not the library's transform)")
