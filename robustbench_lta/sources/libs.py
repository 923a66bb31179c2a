"""``timm:<name>``, ``torchvision:<name>`` and ``hf-hub:<org>/<repo>`` model sources.

Weights are looked for where each library keeps them, offline: timm's in the Hugging Face cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) as the repo named by
the model's ``pretrained_cfg.hf_hub_id``; torchvision's in ``torch.hub.get_dir()/checkpoints``.
Found: pretrained. Missing: downloaded only if the user asked (``download=True``), else the model
is built untrained (``pretrained=false``) with a warning naming the file and where to put it.
Preprocessing (input size, mean/std, resize/crop) is read from the library's own config.
Safetensors are read with safetensors; torchvision's ``.pth`` files with
``torch.load(weights_only=True)`` (tensors only).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .card import ModelCard, Normalized, ResolvedModel, file_sha256, state_sha256


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def hf_cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The cached file of a Hub repo (``models--org--repo/snapshots/<rev>/<file>``), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hf_expected(repo_id: str, filename: str) -> Path:
    return hf_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "<revision>" / filename


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from ..training.checkpoint import load_tensors

    return load_tensors(path)


# ------------------------------------------------------------------------------------------- timm
def _import_timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError:
        raise UserError("timm: sources need timm: pip install 'robustbench-lta[zoo]'") from None
    return timm


def _timm_card_fields(model: Any, pretrained: bool, num_classes: int) -> dict[str, Any]:
    timm = _import_timm()
    cfg = timm.data.resolve_data_config({}, model=model)
    h, w = int(cfg["input_size"][1]), int(cfg["input_size"][2])
    names = None
    if pretrained and num_classes == 1000:
        try:
            from timm.data import ImageNetInfo, infer_imagenet_subset

            subset = infer_imagenet_subset(model)
            names = list(ImageNetInfo(subset).label_names()) if subset else None
        except Exception:  # no label info for this model: names stay unknown
            names = None
    return {"input_size": (h, w), "mean": tuple(float(v) for v in cfg["mean"]),
            "std": tuple(float(v) for v in cfg["std"]), "class_names": names,
            "preprocess": timm_preprocess(cfg)}


def timm_preprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's eval transform (``create_transform(**resolve_data_config(...))``) as image-folder kwargs.

    timm resizes the shorter side to ``floor(size / crop_pct)`` with the config's interpolation, then
    centre-crops (``crop_mode`` center); ``squash`` resizes both sides. Both are exactly what the image
    folder's Resize + CenterCrop do on the decoded PIL image. ``border`` (resize the longer side, pad)
    and non-square sizes have no image-folder equivalent: ``exact`` is then False.
    """
    h, w = int(cfg["input_size"][1]), int(cfg["input_size"][2])
    crop_pct = float(cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    mode = str(cfg.get("crop_mode") or "center")
    interpolation = str(cfg.get("interpolation") or "bilinear")
    scale = int(math.floor(h / crop_pct))
    pre: dict[str, Any] = {"resize": scale, "crop": h, "interpolation": interpolation, "crop_pct": crop_pct,
                           "crop_mode": mode, "exact": h == w and mode in ("center", "squash"),
                           "origin": "timm.data.resolve_data_config + create_transform"}
    if mode == "squash":
        pre["resize"] = [scale, scale]
    if h != w:
        pre["crop"] = [h, w]
    return pre


def build_timm(name: str, num_classes: int | None, seed: int,
               state: dict[str, torch.Tensor] | None) -> Any:
    """A timm model; with ``state`` loaded through timm's own pretrained path (its filters and head
    adaptation), otherwise untrained (seeded)."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"timm:{name}: timm has no such model{hint}")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
    torch.manual_seed(seed)
    if state is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)


def resolve_timm(name: str, *, num_classes: int | None = None, seed: int = 0,
                 download: bool = False) -> ResolvedModel:
    timm = _import_timm()
    if not timm.is_model(name):
        build_timm(name, num_classes, seed, None)  # raises with suggestions
    probe_cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(probe_cfg, "hf_hub_id", None) if probe_cfg is not None else None
    path = hf_cached_file(hub_id, "model.safetensors") if hub_id else None
    if path is None and hub_id and download:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(hub_id, "model.safetensors", cache_dir=str(hf_cache_dir())))
    notes: list[str] = []
    if path is None:
        where = _hf_expected(hub_id, "model.safetensors") if hub_id else "(timm names no Hub repo for it)"
        msg = (f"timm:{name}: pretrained weights not found at {where}; using an UNTRAINED model "
               "(pretrained=false). Put model.safetensors there or pass --download to fetch it")
        warnings.warn(msg, stacklevel=3)
        notes.append("untrained: pretrained weights not found locally")
        model = build_timm(name, num_classes, seed, None)
        sha = state_sha256(model)
    else:
        model = build_timm(name, num_classes, seed, _load_safetensors(path))
        sha = file_sha256(path)
        if num_classes is not None and probe_cfg is not None and num_classes != probe_cfg.num_classes:
            notes.append(f"classifier replaced (untrained) for {num_classes} classes")
    model.eval()
    k = int(model.num_classes)
    fields = _timm_card_fields(model, path is not None, k)
    card = ModelCard(source=f"timm:{name}", architecture=f"timm:{name}", weights_sha256=sha, num_classes=k,
                     pretrained=path is not None, weights_file=str(path) if path else None, notes=notes,
                     **fields)
    return ResolvedModel(Normalized(model, card.mean, card.std), card)


# ------------------------------------------------------------------------------------ torchvision
def torchvision_preprocess(tf: Any, arch: str) -> dict[str, Any]:
    """The weights' ``transforms()`` (``ImageClassification``) as image-folder kwargs: shorter side
    resized with its interpolation (antialiased, as torchvision's Resize is on PIL images), centre crop."""
    resize = [int(v) for v in tf.resize_size]
    crop = [int(v) for v in tf.crop_size]
    return {"resize": resize[0] if len(resize) == 1 else resize, "crop": crop[0] if len(crop) == 1 else crop,
            "interpolation": str(tf.interpolation.value), "antialias": bool(getattr(tf, "antialias", True)),
            "exact": True, "origin": f"torchvision {arch} weights.transforms()"}


def resolve_torchvision(name: str, *, num_classes: int | None = None, seed: int = 0,
                        download: bool = False) -> ResolvedModel:
    import torchvision.models as tvm

    arch, _, tag = name.partition(".")
    try:
        builder = tvm.get_model_builder(arch)
    except ValueError:
        close = difflib.get_close_matches(arch, tvm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"torchvision:{name}: torchvision has no such model{hint}") from None
    enum = tvm.get_model_weights(arch)
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        known = ", ".join(enum.__members__)
        raise UserError(f"torchvision:{name}: no weights {tag!r} (known: {known})") from None
    categories = list(weights.meta.get("categories") or [])
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file() and download:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path))
    tf = weights.transforms()
    crop = int(tf.crop_size[0])
    mean, std = tuple(float(v) for v in tf.mean), tuple(float(v) for v in tf.std)
    notes: list[str] = []
    torch.manual_seed(seed)
    if path.is_file():
        from .zoo import restricted_torch_load

        state = restricted_torch_load(path)
        model = builder(weights=None, num_classes=len(categories) or 1000)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise UserError(f"{path} does not fit torchvision's {arch} ({detail})") from None
        sha, pretrained = file_sha256(path), True
        if num_classes is not None and num_classes != len(categories):
            raise UserError(f"torchvision:{name} has {len(categories)} classes; a different "
                            f"num_classes ({num_classes}) would need a new, untrained head")
    else:
        warnings.warn(f"torchvision:{name}: weights not found at {path}; using an UNTRAINED model "
                      "(pretrained=false). Put the file there or pass --download to fetch it", stacklevel=3)
        model = builder(weights=None, num_classes=num_classes or len(categories) or 1000)
        sha, pretrained = state_sha256(model), False
        notes.append("untrained: pretrained weights not found locally")
    model.eval()
    k = int(num_classes or len(categories) or 1000) if not pretrained else len(categories)
    card = ModelCard(source=f"torchvision:{name}", architecture=f"torchvision:{arch}", weights_sha256=sha,
                     num_classes=k, input_size=(crop, crop), mean=mean, std=std,
                     class_names=categories if pretrained else None, pretrained=pretrained,
                     preprocess=torchvision_preprocess(tf, arch),
                     weights_file=str(path) if pretrained else None, notes=notes)
    return ResolvedModel(Normalized(model, mean, std), card)


# ------------------------------------------------------------------------------------------ hf-hub
def resolve_hf_hub(spec: str, *, num_classes: int | None = None, seed: int = 0,
                   download: bool = False, load_checkpoint: Any = None) -> ResolvedModel:
    """A Hub repo (or a local folder laid out like one) holding safetensors weights and either a
    timm ``config.json`` (``architecture``, ``num_classes``, ``pretrained_cfg``) or a robustbench-lta
    model card ``model.json``. Repos with only pickled weights are refused."""
    repo, _, revision = spec.partition("@")
    local = Path(repo).expanduser()
    if local.is_dir():
        folder: Path | None = local
    else:
        if repo.count("/") != 1:
            raise UserError(f"hf-hub:{spec}: expected hf-hub:<org>/<repo> (or a local folder)")
        found = hf_cached_file(repo, "model.safetensors", revision or None)
        if found is None and download:
            from huggingface_hub import snapshot_download

            snapshot_download(repo, revision=revision or None, cache_dir=str(hf_cache_dir()),
                              allow_patterns=["*.json", "*.safetensors"])
            found = hf_cached_file(repo, "model.safetensors", revision or None)
        if found is None:
            pickled = hf_cached_file(repo, "pytorch_model.bin", revision or None)
            if pickled is not None:
                raise UserError(f"hf-hub:{spec} has only pickled weights ({pickled}): hf-hub sources "
                                "are safetensors only")
            raise UserError(f"hf-hub:{spec}: model.safetensors not found at "
                            f"{_hf_expected(repo, 'model.safetensors')}: put the repo's files there, "
                            "or pass --download to fetch it")
        folder = found.parent
    weights = folder / "model.safetensors"
    if not weights.is_file():
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt*")):
            raise UserError(f"hf-hub:{spec}: only pickled weights in {folder}: hf-hub sources are "
                            "safetensors only")
        raise UserError(f"hf-hub:{spec}: no model.safetensors in {folder}")
    if (folder / "model.json").is_file() and load_checkpoint is not None:  # a project checkpoint on the Hub
        # (the loader is passed in by resolve.py, which imports this module: no import circle)
        resolved = load_checkpoint(folder / "model.safetensors")
        resolved.card.source = f"hf-hub:{spec}"
        return resolved
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"hf-hub:{spec}: no config.json (timm layout) or model.json (robustbench-lta "
                        f"card) beside the weights in {folder}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path} is not valid JSON ({exc})") from None
    arch, pretrained_cfg = local_timm_config(config, config_path)
    timm = _import_timm()
    state = _load_safetensors(weights)
    k = num_classes or config.get("num_classes")
    torch.manual_seed(seed)
    overlay = {**pretrained_cfg, "state_dict": state}
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay,
                              **({"num_classes": int(k)} if k else {}))
    check_loaded(model, state, weights, spec)
    model.eval()
    fields = _timm_card_fields(model, True, int(model.num_classes))
    names = config.get("label_names")
    if isinstance(names, list) and len(names) == int(model.num_classes):
        fields["class_names"] = [str(n) for n in names]
    card = ModelCard(source=f"hf-hub:{spec}", architecture=f"timm:{arch}",
                     weights_sha256=file_sha256(weights),
                     num_classes=int(model.num_classes), weights_file=str(weights), **fields)
    return ResolvedModel(Normalized(model, card.mean, card.std), card)


#: ``pretrained_cfg`` keys that tell timm where to fetch weights: with ``source: hf-hub`` timm
#: downloads the named repo and ignores the ``state_dict`` this tool passes (the local weights).
_WEIGHT_LOCATION_KEYS = ("source", "hf_hub_id", "hf_hub_filename", "url", "file", "state_dict")


def local_timm_config(config: dict[str, Any], config_path: Path) -> tuple[str, dict[str, Any]]:
    """The architecture and ``pretrained_cfg`` to build a local timm-layout folder with, such that
    timm can only load the folder's own weights (never a Hub repo or URL named in ``config.json``).

    An architecture that itself names a location (``hf-hub:org/repo``, ``local-dir:...``) is refused:
    timm would read its config and weights from there, not from this folder.
    """
    arch = config.get("architecture")
    if not arch or not isinstance(arch, str):
        raise UserError(f"{config_path} names no architecture: only timm-layout repos are supported")
    if ":" in arch:
        raise UserError(f"{config_path}: architecture {arch!r} names a location, so timm would load it "
                        "from there instead of this folder's model.safetensors: give a timm model name "
                        "(e.g. resnet18), or use that source directly")
    raw = config.get("pretrained_cfg") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{config_path}: pretrained_cfg must be a mapping, got {type(raw).__name__}")
    return arch, {k: v for k, v in raw.items() if k not in _WEIGHT_LOCATION_KEYS}


def check_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], weights: Path, spec: str) -> None:
    """Refuse a model whose weights are not the local file's (timm took them from elsewhere).

    Compares the tensors the file and the model share by name and shape (a classifier replaced for
    another ``num_classes`` differs in shape and is skipped). timm's checkpoint filters may rename
    or adapt a few tensors, so only a model where most shared tensors differ is refused: weights
    fetched from another repo differ everywhere.
    """
    own = model.state_dict()
    shared = [k for k, t in state.items() if k in own and tuple(own[k].shape) == tuple(t.shape)]
    differ = [k for k in shared
              if not torch.equal(own[k].detach().cpu(), state[k].detach().cpu().to(own[k].dtype))]
    if shared and 2 * len(differ) > len(shared):
        raise UserError(f"hf-hub:{spec}: the model built does not hold the weights of {weights} "
                        f"({len(differ)} of {len(shared)} tensors differ, e.g. {differ[0]}): timm loaded "
                        "other weights; check architecture and pretrained_cfg in its config.json")
