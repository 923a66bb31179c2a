"""Does every RobustBench entry load from a file in each key layout RobustBench accepts? Checked
without weights: each architecture is built on the meta device, its state-dict keys are laid out as
the zoo's files lay them out, and both RobustBench's own ``load_model`` (its real code, with the file
read and the network build intercepted) and this package's loader resolve them. An entry loads when
this package accepts every layout RobustBench loads completely, putting each file tensor in the same
place. Used by ``benchmarks/zoo_table.py`` (the table in docs/models.md) and tests/test_zoo_layouts.py.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..errors import UserError
from .zoo_keys import (
    _is_norm_constant,
    build_zoo_net,
    fit_zoo_state,
    meta_device,
    timm_entry,
    unwrap_checkpoint,
    zoo_keys,
)


@dataclass
class EntryCheck:
    dataset: str
    threat: str
    name: str
    loaded: bool
    reason: str = ""                                   # why not, when not loaded
    layouts: dict[str, str] = field(default_factory=dict)  # layout -> "ok" / "both refuse" / what differs
    device: str = "meta"


def iter_entries() -> Iterator[tuple[str, str, str, Mapping[str, Any]]]:
    """(dataset, threat, name, entry) for every entry of the installed robustbench's zoo."""
    from .zoo import import_robustbench

    model_zoo, _ = import_robustbench()
    for ds, boards in model_zoo.model_dicts.items():
        for tm, models in boards.items():
            for name, entry in models.items():
                yield ds.value, tm.value, name, entry


def build_without_weights(entry: Mapping[str, Any], dataset: str, threat: str, name: str
                          ) -> tuple[nn.Module, str]:
    """The architecture on the meta device; on the CPU where its builder needs real values
    (e.g. Kang2021Stable's ODE block calls ``.item()``)."""
    try:
        with meta_device():
            return build_zoo_net(entry, dataset, threat, name), "meta"
    except (RuntimeError, NotImplementedError):
        return build_zoo_net(entry, dataset, threat, name), "cpu"


def file_layouts(net: nn.Module) -> dict[str, Any]:
    """The checkpoint layouts RobustBench's files come in, made from the architecture's own keys."""
    sd = net.state_dict()
    tops = {k.split(".", 1)[0] for k in sd}
    out: dict[str, Any] = {
        "plain": dict(sd),
        "module.": {f"module.{k}": v for k, v in sd.items()},
        "state_dict+module.": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }
    if tops == {"normalize", "model"}:  # RobustBench's ImageNet wrapper: the inner network under model.
        out["wrapper model."] = {k: v for k, v in sd.items() if k.startswith("model.")}
    else:  # a file saved from a wrapper holding the network as .model
        out["wrapper model."] = {f"model.{k}": v for k, v in sd.items()}
    norm = [k for k, _ in net.named_buffers() if _is_norm_constant(k) and k in sd]
    if norm:
        out["no norm buffers"] = {k: v for k, v in sd.items() if k not in norm}
    return out


def _origins(checkpoint: Any) -> dict[int, str]:
    for key in ("last", "state_dict"):
        checkpoint = checkpoint.get(key, checkpoint)
    return {id(v): k for k, v in checkpoint.items()}


def _keeps_last(name: str) -> bool:
    """Entries whose files RobustBench reads under ``last`` (it indexes the file with it)."""
    return "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding"


def _plan(final: Mapping[str, torch.Tensor], own: Mapping[str, Any], origins: dict[int, str]
          ) -> dict[str, str]:
    return {k: origins.get(id(v), "<derived>") for k, v in final.items() if k in own}


def ours(net: nn.Module, checkpoint: Any, dataset: str, threat: str, name: str) -> dict[str, str]:
    """What this package loads where (UserError when it refuses)."""
    state = zoo_keys(unwrap_checkpoint(checkpoint), dataset, threat, name, net)
    final, _ = fit_zoo_state(net, state, dataset, name, "the file")
    net.load_state_dict(final, strict=False)
    return _plan(final, net.state_dict(), _origins(checkpoint))


def robustbench(net: nn.Module, entry: Mapping[str, Any], checkpoint: Any, dataset: str, threat: str,
                name: str) -> dict[str, str] | None:
    """What RobustBench's ``load_model`` loads where; None when it refuses or leaves a parameter or
    a non-normalisation buffer unloaded (its non-strict retry keys on the error text only)."""
    from robustbench import utils as rb_utils

    captured: dict[str, Any] = {}
    original = rb_utils._safe_load_state_dict

    def spy(model: nn.Module, model_name: str, state_dict: Any, dataset_: Any) -> nn.Module:
        captured["state"] = state_dict
        return original(model, model_name, state_dict, dataset_)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / dataset / threat / f"{name}.pt"
        path.parent.mkdir(parents=True)
        path.touch()  # load_model checks the file exists; torch.load below returns the checkpoint
        with mock.patch.object(rb_utils, "_safe_load_state_dict", spy), \
                mock.patch.object(rb_utils.torch, "load", lambda *a, **k: checkpoint), \
                mock.patch.dict(entry, {"model": lambda: net}), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rb_utils.load_model(name, model_dir=tmp, dataset=dataset, threat_model=threat)
            except (RuntimeError, KeyError, TypeError):
                return None
    own = net.state_dict()
    plan = _plan(captured["state"], own, _origins(checkpoint))
    buffers = {k for k, _ in net.named_buffers()}
    if any(k not in plan and not (k in buffers and _is_norm_constant(k)) for k in own):
        return None
    return plan


def check_entry(dataset: str, threat: str, name: str, entry: Mapping[str, Any]) -> EntryCheck:
    """Every layout of one entry through both loaders (see the module's docstring)."""
    if threat == "corruptions":
        return EntryCheck(dataset, threat, name, False, "corruptions: no Lp threat model, refused by the "
                                                        "robustbench: source")
    if isinstance(entry.get("gdrive_id"), list):
        return EntryCheck(dataset, threat, name, False, f"ensemble of {len(entry['gdrive_id'])} files")
    if dataset == "imagenet" and "Standard" in name:
        return EntryCheck(dataset, threat, name, False, "torchvision's own weights: use torchvision:")
    net, device = build_without_weights(entry, dataset, threat, name)
    via_timm = timm_entry(dataset, threat, name) is not None  # RobustBench would download from the Hub
    check = EntryCheck(dataset, threat, name, True, device=device)
    for layout, checkpoint in file_layouts(net).items():
        if _keeps_last(name):
            checkpoint = {"last": checkpoint}
        theirs = None if via_timm else robustbench(net, entry, checkpoint, dataset, threat, name)
        try:
            mine: dict[str, str] | None = ours(net, checkpoint, dataset, threat, name)
        except UserError as exc:
            mine, error = None, str(exc)
        if via_timm:
            check.layouts[layout] = "ok" if mine is not None else f"refused: {error}"
            if mine is None and layout in ("plain", "module.", "state_dict+module."):
                check.loaded, check.reason = False, f"{layout}: {error}"
        elif theirs is None:
            check.layouts[layout] = "both refuse" if mine is None else "only ours loads"
        elif mine is None:
            check.layouts[layout] = f"refused (RobustBench loads it): {error}"
            check.loaded, check.reason = False, f"{layout}: {error}"
        elif mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            check.layouts[layout] = f"differs at {', '.join(diff[:3])}"
            check.loaded, check.reason = False, f"{layout}: tensors placed differently ({diff[0]})"
        else:
            check.layouts[layout] = "ok"
    if check.loaded and check.layouts.get("plain") != "ok":
        check.loaded, check.reason = False, f"plain layout: {check.layouts.get('plain')}"
    return check


def audit(only: set[str] | None = None) -> list[EntryCheck]:
    """check_entry for every zoo entry (or the ``dataset/threat/name`` keys in ``only``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no builder may reach out for weights
    out = []
    for dataset, threat, name, entry in iter_entries():
        if only is None or f"{dataset}/{threat}/{name}" in only:
            out.append(check_entry(dataset, threat, name, entry))
    return out
