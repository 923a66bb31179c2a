"""One entry point from a model source string to a wrapped module and its card.

Sources (docs/models.md):

- a project checkpoint: ``run folder``, ``NAME.safetensors`` + ``NAME.json`` card, or ``NAME.json``;
- a registry name (``vgg16``...): built untrained, with a warning;
- ``robustbench:<dataset>/<threat>/<name>``, ``timm:<name>``, ``torchvision:<name>[.<weights>]``,
  ``hf-hub:<org>/<repo>`` (safetensors only);
- ``FILE.safetensors`` with ``arch=`` (a registry name, ``timm:<name>`` or ``torchvision:<name>``):
  a bare state dict; ``FILE.pt``/``.pth`` likewise, read with ``torch.load(weights_only=True)``.

Nothing is downloaded unless weights are missing and ``download=True``.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models.registry import create_model, list_models
from .card import ModelCard, Normalized, ResolvedModel, file_sha256, state_sha256

SCHEMES = ("robustbench:", "timm:", "torchvision:", "hf-hub:")
_TORCH_SUFFIXES = (".pt", ".pth")


def resolve_model_source(source: str, *, arch: str | None = None, name: str | None = None,
                         num_classes: int | None = None, width: float = 1.0, seed: int = 0,
                         download: bool = False, resize_inputs: bool = False) -> ResolvedModel:
    """Resolve ``source`` to a module mapping [0,1] NCHW images to logits, plus its :class:`ModelCard`.

    Args:
        arch: architecture of a bare state dict (``.safetensors``/``.pt`` without a card).
        name: label for messages (the sweep's model name).
        num_classes, width: for registry names and bare state dicts (inferred from the weights
            when not given); for timm a different ``num_classes`` replaces the head.
        seed: seeds the initialisation of untrained models.
        download: fetch missing pretrained weights (never done otherwise).
        resize_inputs: resize images of another size to the card's input size inside the module
            (so models of different input sizes can be swept side by side on one dataset).
    """
    resolved = _resolve(source, arch=arch, num_classes=num_classes, width=width, seed=seed, download=download)
    size = resolved.card.input_size
    if resize_inputs and size is None:
        resolved.card.notes.append("resize_inputs ignored: the card has no input size")
    elif resize_inputs:
        module = resolved.module
        if isinstance(module, Normalized):
            module.resize = tuple(size)
        else:  # the project's models normalise themselves: an identity wrapper that only resizes
            channels = len(resolved.card.mean)
            module = Normalized(module, (0.0,) * channels, (1.0,) * channels, size)
        resolved.card.input_resize = tuple(size)
        resolved.card.notes.append(f"inputs resized to {size[0]}x{size[1]} inside the model (bilinear)")
        resolved = ResolvedModel(module, resolved.card)
    return resolved


def _resolve(source: str, *, arch: str | None, num_classes: int | None, width: float, seed: int,
             download: bool) -> ResolvedModel:
    source = str(source).strip()
    if not source:
        raise UserError("empty model source: give a checkpoint, a registry name, or robustbench:/timm:/"
                        "torchvision:/hf-hub: sources")
    if arch is not None and source.startswith(SCHEMES):
        raise UserError(f"--arch {arch} only applies to a bare weights file, not to {source}")
    if source.startswith("robustbench:"):
        from .zoo import resolve_robustbench

        return resolve_robustbench(source[len("robustbench:"):], download=download)
    if source.startswith("timm:"):
        from .libs import resolve_timm

        return resolve_timm(source[len("timm:"):], num_classes=num_classes, seed=seed, download=download)
    if source.startswith("torchvision:"):
        from .libs import resolve_torchvision

        return resolve_torchvision(source[len("torchvision:"):], num_classes=num_classes, seed=seed,
                                   download=download)
    if source.startswith("hf-hub:"):
        from .libs import resolve_hf_hub

        return resolve_hf_hub(source[len("hf-hub:"):], num_classes=num_classes, seed=seed, download=download,
                              load_checkpoint=resolve_checkpoint_source)
    path = Path(source).expanduser()
    if arch is not None:
        return resolve_state_dict(path, arch, num_classes=num_classes, width=width, seed=seed)
    if path.exists():
        if path.suffix in (".safetensors", *_TORCH_SUFFIXES) and not path.with_suffix(".json").is_file():
            raise UserError(f"{path} is a bare state dict (no {path.with_suffix('.json').name} card beside "
                            "it): give its architecture with --arch NAME (a registry name, timm:NAME or "
                            "torchvision:NAME)")
        return resolve_checkpoint_source(path)
    if source in list_models():
        warnings.warn(f"model '{source}' is a registry name without a checkpoint: attacking an "
                      "UNTRAINED model (pass a checkpoint path to attack a trained one)", stacklevel=2)
        torch.manual_seed(seed)
        model = create_model(source, num_classes=num_classes or 10, width=width)
        card = _module_card(model, f"registry:{source}", source, state_sha256(model))
        card.pretrained = False
        card.notes.append("untrained registry model")
        return ResolvedModel(model, card)
    if "/" in source or "." in source:
        raise UserError(f"model '{source}' is neither a checkpoint nor a registered model name (the path "
                        "does not exist): give a checkpoint, a registry name, or a robustbench:/timm:/"
                        "torchvision:/hf-hub: source")
    close = difflib.get_close_matches(source, list_models(), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"model '{source}' is neither a checkpoint nor a registered model name{hint}: see "
                    "`robustbench-lta models`, or use a robustbench:/timm:/torchvision:/hf-hub: source")


# --------------------------------------------------------------------------------- project checkpoint
def resolve_checkpoint_source(path: Path) -> ResolvedModel:
    """A checkpoint this project trained (safetensors + JSON card), loaded by ``load_model``."""
    from ..training.checkpoint import load_model

    try:
        model = load_model(path)
    except TypeError as exc:  # the builder refused a keyword the card passes it
        error = _card_kwargs_error(path, exc)
        if error is None:
            raise
        raise error from None
    raw: dict[str, Any] = dict(getattr(model, "card", None) or {})
    section = raw.get("model") or {}
    ds = raw.get("dataset") if isinstance(raw.get("dataset"), dict) else {}
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    data = training.get("data") if isinstance(training.get("data"), dict) else None
    size = raw.get("input_size") or ds.get("input_size")
    card = _module_card(model, str(path), str(section.get("name", "?")), str(raw.get("sha256")))
    if isinstance(size, list | tuple) and len(size) >= 2:
        card.input_size = (int(size[-2]), int(size[-1]))
    if ds.get("classes"):
        card.class_names = [str(c) for c in ds["classes"]]
    if data and data.get("name"):
        card.dataset = {"name": data["name"], "root": data.get("root"),
                        "kwargs": dict(data.get("kwargs") or {})}
    elif ds.get("name"):
        card.dataset = {"name": ds["name"], "kwargs": dict(ds.get("kwargs") or {})}
    card.details = raw
    return ResolvedModel(model, card)


def _card_kwargs_error(path: Path, exc: TypeError) -> UserError | None:
    """A UserError naming the card's ``model.kwargs`` key the builder refused, or None when the
    TypeError is not about such a key (then it is a bug and keeps its traceback)."""
    from ..training.checkpoint import read_card

    found = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if found is None:
        return None
    try:
        card = read_card(path)
    except UserError:
        return None
    section = card.get("model") if isinstance(card.get("model"), dict) else {}
    kwargs = section.get("kwargs") if isinstance(section.get("kwargs"), dict) else {}
    key = found.group(1)
    if key not in kwargs:
        return None
    return UserError(f"model card of {path}: model.kwargs has {key!r}={kwargs[key]!r}, which architecture "
                     f"{section.get('name')!r} does not take: remove it from the card (it was edited by hand "
                     "or written by another version of that model's code)")


def _floats(t: torch.Tensor) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in t.flatten())


def _module_card(model: nn.Module, source: str, arch: str, sha: str) -> ModelCard:
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    return ModelCard(
        source=source, architecture=arch, weights_sha256=sha,
        num_classes=int(getattr(model, "num_classes", 0) or 0),
        mean=_floats(mean) if isinstance(mean, torch.Tensor) else (0.0, 0.0, 0.0),
        std=_floats(std) if isinstance(std, torch.Tensor) else (1.0, 1.0, 1.0),
        notes=["normalisation inside the model (its mean/std buffers)"],
    )


# ------------------------------------------------------------------------------------ bare state dict
def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict from ``.safetensors`` (safetensors) or ``.pt``/``.pth`` (weights_only)."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from ..training.checkpoint import load_tensors

        return load_tensors(path)
    if path.suffix in _TORCH_SUFFIXES:
        from .zoo import restricted_torch_load, zoo_state_dict

        return zoo_state_dict(restricted_torch_load(path))
    raise UserError(f"{path}: a bare state dict must be .safetensors (or .pt/.pth of tensors only)")


def _classifier_rows(state: dict[str, torch.Tensor], key: str | None) -> int | None:
    if key and f"{key}.weight" in state:
        return int(state[f"{key}.weight"].shape[0])
    return None


def _infer_classes(build: Any, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes the weights were saved with: the entries whose shape follows
    ``num_classes`` (found by building the architecture twice on the meta device)."""
    try:
        with torch.device("meta"):
            a, b = build(3).state_dict(), build(5).state_dict()
    except Exception:  # an architecture that cannot be built on meta: let the strict load decide
        return None
    for key, t in a.items():
        if key in b and t.ndim and t.shape[0] == 3 and b[key].shape[0] == 5 and key in state:
            return int(state[key].shape[0])
    return None


def resolve_state_dict(path: Path, arch: str, *, num_classes: int | None = None, width: float = 1.0,
                       seed: int = 0) -> ResolvedModel:
    """Weights without a card: the architecture comes from ``arch``; loading is strict."""
    state = read_state_file(path)
    sha = file_sha256(path)
    torch.manual_seed(seed)
    if arch.startswith("timm:"):
        from .libs import _import_timm, _timm_card_fields

        timm = _import_timm()
        tname = arch[len("timm:"):]
        if not timm.is_model(tname):
            from .libs import build_timm

            build_timm(tname, None, seed, None)  # raises with suggestions
        cfg = timm.models.get_pretrained_cfg(tname)
        k = num_classes or _classifier_rows(state, getattr(cfg, "classifier", None) if cfg else None)
        net = timm.create_model(tname, pretrained=False, **({"num_classes": k} if k else {}))
        _load_strict(net, state, path, arch)
        net.eval()
        fields = _timm_card_fields(net, False, int(net.num_classes))
        card = ModelCard(source=str(path), architecture=arch, weights_sha256=sha,
                         num_classes=int(net.num_classes), weights_file=str(path),
                         notes=["preprocessing from timm's config for this architecture"],
                         **fields)
        return ResolvedModel(Normalized(net, card.mean, card.std), card)
    if arch.startswith("torchvision:"):
        import torchvision.models as tvm

        from .libs import torchvision_preprocess

        tv = arch[len("torchvision:"):]
        try:
            builder = tvm.get_model_builder(tv)
        except ValueError:
            raise UserError(f"--arch {arch}: torchvision has no such model") from None
        k = num_classes or _infer_classes(lambda c: builder(weights=None, num_classes=c), state) or 1000
        net = builder(weights=None, num_classes=k)
        _load_strict(net, state, path, arch)
        tf = tvm.get_model_weights(tv).DEFAULT.transforms()
        crop = int(tf.crop_size[0])
        card = ModelCard(source=str(path), architecture=arch, weights_sha256=sha, num_classes=k,
                         input_size=(crop, crop), mean=tuple(tf.mean), std=tuple(tf.std),
                         preprocess=torchvision_preprocess(tf, tv), weights_file=str(path))
        return ResolvedModel(Normalized(net.eval(), card.mean, card.std), card)
    if arch not in list_models():
        close = difflib.get_close_matches(arch, list_models(), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"--arch {arch!r} is not a registered model{hint}: give a registry name, "
                        "timm:NAME or torchvision:NAME")
    notes = []
    if width == 1.0:  # the default: the file may be a narrower model; its first conv says how narrow
        guess = _infer_width(arch, state)
        if guess is not None and guess != 1.0:
            width = guess
            notes.append(f"width {guess:g} inferred from the weights")
    k = num_classes or _infer_classes(lambda c: create_model(arch, num_classes=c, width=width), state) or 10
    model = create_model(arch, num_classes=k, width=width)
    _load_strict(model, state, path, arch, hint=" (check --width and --num-classes)")
    model.eval()
    card = _module_card(model, str(path), arch, sha)
    card.weights_file = str(path)
    card.notes += notes
    return ResolvedModel(model, card)


def _infer_width(arch: str, state: dict[str, torch.Tensor]) -> float | None:
    """Channel-width multiplier of a registry model's weights: first conv's filters / width-1 filters."""
    try:
        with torch.device("meta"):
            ref = create_model(arch, num_classes=10, width=1.0).state_dict()
    except Exception:  # cannot build on meta: keep the given width
        return None
    for key, t in ref.items():
        if t.ndim == 4 and key.endswith("weight") and key in state and state[key].ndim == 4:
            return round(float(state[key].shape[0]) / float(t.shape[0]), 4)
    return None


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str,
                 hint: str = "") -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = " ".join(lines[:3])[:240]
        raise UserError(f"{path} does not fit --arch {arch}{hint}: {detail}") from None
