"""``robustbench:<dataset>/<threat>/<name>``: a model of the RobustBench zoo, with its published numbers.

The architecture comes from the ``robustbench`` package (optional extra ``zoo``); the weights are
the zoo's ``.pt`` file in RobustBench's own layout, ``$ROBUSTBENCH_MODEL_DIR/<dataset>/<threat>/<name>.pt``
(default ``./models``, RobustBench's default), read with ``torch.load(weights_only=True)``: tensors
and plain containers only, never arbitrary objects. A missing file is downloaded only when asked.
The published clean and AutoAttack accuracies come from RobustBench's ``model_info`` JSON files:
``$ROBUSTBENCH_MODEL_INFO/<dataset>/<threat>/<name>.json`` when set (a checkout's ``model_info``
folder), else a snapshot bundled with this package (robustbench_model_info.json).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .card import ModelCard, Normalized, Published, ResolvedModel, file_sha256

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
_THREATS = {"linf": "Linf", "l2": "L2"}
_INPUT = {"Res256Crop224": (224, 256), "BicubicRes256Crop224": (224, 256), "Crop288": (288, None),
          "Res224": (224, None)}
_BUNDLED = Path(__file__).with_name("robustbench_model_info.json")


def import_robustbench() -> Any:
    """``robustbench.model_zoo`` (UserError naming the extra if it is not installed).

    robustbench 1.1.1 imports the authors' AutoAttack as ``autoattack``, the name of its git
    checkout; on PyPI the same code is ``pyautoattack``. The alias below is only set when no
    ``autoattack`` module exists.
    """
    try:
        import importlib.util

        if importlib.util.find_spec("autoattack") is None:
            import pyautoattack
            import pyautoattack.state

            sys.modules.setdefault("autoattack", pyautoattack)
            sys.modules.setdefault("autoattack.state", pyautoattack.state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from robustbench import model_zoo
            from robustbench.model_zoo import enums
    except ImportError as exc:
        raise UserError(f"robustbench: sources need the optional extra ({exc}): "
                        "pip install 'robustbench-lta[zoo]'") from None
    return model_zoo, enums


def parse_zoo_source(spec: str) -> tuple[str, str, str]:
    """``cifar10/Linf/Carmon2019Unlabeled`` -> (``cifar10``, ``Linf``, ``Carmon2019Unlabeled``)."""
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise UserError(f"robustbench:{spec}: expected robustbench:<dataset>/<threat>/<name>, "
                        "e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled")
    dataset, threat, name = parts[0].lower(), parts[1], parts[2]
    if dataset not in _DATASETS:
        raise UserError(f"robustbench:{spec}: dataset must be one of {', '.join(_DATASETS)}")
    if threat.lower() not in _THREATS:
        raise UserError(f"robustbench:{spec}: threat model must be Linf or L2 (corruption models "
                        "have no eps to compare)")
    return dataset, _THREATS[threat.lower()], name


def model_dir() -> Path:
    return Path(os.environ.get("ROBUSTBENCH_MODEL_DIR") or "models").expanduser()


@lru_cache(maxsize=1)
def _bundled_info() -> dict[str, Any]:
    return json.loads(_BUNDLED.read_text())


def _parse_eps(text: Any) -> float | None:
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        return None


def published_numbers(dataset: str, threat: str, name: str) -> Published | None:
    """The zoo's reported clean and AutoAttack accuracy for a model, or None if it has none."""
    user_dir = os.environ.get("ROBUSTBENCH_MODEL_INFO")
    entry: Mapping[str, Any] | None = None
    origin = ""
    if user_dir:
        path = Path(user_dir).expanduser() / dataset / threat / f"{name}.json"
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"{path} is not valid JSON ({exc}): fix or remove it") from None
            entry = {"clean_acc": raw.get("clean_acc"), "autoattack_acc": raw.get("autoattack_acc"),
                     "eps": raw.get("eps"), "link": raw.get("link")}
            origin = f"RobustBench model_info ({path})"
    if entry is None:
        info = _bundled_info()
        entry = info["models"].get(f"{dataset}/{threat}", {}).get(name)
        origin = f"RobustBench model_info (bundled snapshot, commit {info['commit'][:7]})"
    if entry is None:
        return None

    def pct(v: Any) -> float | None:
        try:
            return float(v) / 100.0
        except (TypeError, ValueError):
            return None

    return Published(clean_acc=pct(entry.get("clean_acc")), robust_acc=pct(entry.get("autoattack_acc")),
                     attack="autoattack", norm=threat.lower(), eps=_parse_eps(entry.get("eps")),
                     origin=origin, reference=str(entry.get("link") or ""))


def restricted_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; anything that needs more than tensors is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: the file wants arbitrary objects
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"refusing {path}: it cannot be read with torch.load(weights_only=True) "
                        f"(tensors only; {type(exc).__name__}: {first}); convert it to .safetensors "
                        "from a copy you trust") from None


def zoo_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """A zoo file's state dict without its ``module.``/``model.`` prefixes (see zoo_keys)."""
    from .zoo_keys import unwrap_checkpoint

    return unwrap_checkpoint(checkpoint)


def resolve_robustbench(spec: str, *, download: bool = False) -> ResolvedModel:
    dataset, threat, name = parse_zoo_source(spec)
    model_zoo, enums = import_robustbench()
    models = model_zoo.model_dicts[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat)]
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"robustbench:{spec}: no model {name!r} in the zoo's {dataset}/{threat} "
                        f"leaderboard{hint}")
    entry = models[name]
    if isinstance(entry.get("gdrive_id"), list):
        raise UserError(f"robustbench:{spec} is an ensemble of several files: not supported yet")
    if dataset == "imagenet" and "Standard" in name:
        raise UserError(f"robustbench:{spec} is torchvision's own weights: use torchvision:<name> instead")
    path = model_dir() / dataset / threat / f"{name}.pt"
    if not path.is_file():
        if not download:
            raise UserError(f"robustbench:{spec}: weights not found at {path}: put the zoo's {name}.pt "
                            f"there (or set ROBUSTBENCH_MODEL_DIR to the folder holding {dataset}/), "
                            "or pass --download to fetch it")
        if not entry.get("gdrive_id"):
            raise UserError(f"robustbench:{spec} has no download link in the zoo")
        from robustbench.utils import download_gdrive_new

        path.parent.mkdir(parents=True, exist_ok=True)
        download_gdrive_new(entry["gdrive_id"], path)
    from .zoo_keys import build_zoo_net, fit_zoo_state, zoo_keys

    net = build_zoo_net(entry, dataset, threat, name)
    state = zoo_keys(zoo_state_dict(restricted_torch_load(path)), dataset, threat, name, net)
    state, notes = fit_zoo_state(net, state, dataset, name, str(path))
    # fit_zoo_state checked every parameter and buffer; only tolerated normalisation constants are left out
    net.load_state_dict(state, strict=False)
    net.eval()
    size, resize = (32, None) if dataset != "imagenet" else _INPUT.get(
        str(entry.get("preprocessing") or "Res256Crop224"), (224, 256))
    preprocessing = str(entry.get("preprocessing") or "")
    class_names = CIFAR10_CLASSES if dataset == "cifar10" else None
    if dataset == "imagenet":
        class_names = _imagenet_synsets()
    published = published_numbers(dataset, threat, name)
    info = _bundled_info()["models"].get(f"{dataset}/{threat}", {}).get(name, {})
    arch_text = f"robustbench:{name}" + (f" ({info['architecture']})" if info.get("architecture") else "")
    card = ModelCard(
        source=f"robustbench:{dataset}/{threat}/{name}",
        architecture=arch_text,
        weights_sha256=file_sha256(path), num_classes=_DATASETS[dataset], input_size=(size, size),
        class_names=class_names, published=published,
        dataset={"name": dataset} if dataset != "imagenet" else None,
        preprocess=_zoo_preprocess(preprocessing) if dataset == "imagenet" else {},
        weights_file=str(path), notes=["normalisation inside the zoo's network", *notes],
    )
    # RobustBench models take [0,1] images and normalise themselves: identity wrapper
    return ResolvedModel(Normalized(net, card.mean, card.std), card)


def _zoo_preprocess(preprocessing: str) -> dict[str, Any]:
    """RobustBench's own ImageNet transform for the entry (``robustbench.data.PREPROCESSINGS``)."""
    origin = f"robustbench.data.PREPROCESSINGS[{preprocessing or 'Res256Crop224'!r}]"
    if preprocessing == "Crop288":
        return {"crop": 288, "origin": origin}
    if preprocessing == "Res224":  # both sides to 224, aspect ratio not kept
        return {"resize": [224, 224], "interpolation": "bilinear", "origin": origin}
    mode = "bicubic" if preprocessing.startswith("Bicubic") else "bilinear"
    return {"resize": 256, "crop": 224, "interpolation": mode, "origin": origin}


def _imagenet_synsets() -> list[str] | None:
    try:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo("imagenet-1k").label_names())
    except Exception:  # timm missing or without the info files: names unknown
        return None
