"""How a RobustBench zoo file's keys become the architecture's, as RobustBench 1.1.1's ``load_model`` does it.

RobustBench (``robustbench.utils.load_model``) reads a zoo file, unwraps ``state_dict``/``last``, strips
the ``module.`` (DataParallel) and ``model.`` (wrapper) prefixes, and for ImageNet entries adds
``model.`` back, because their architecture is ``Sequential(normalize=ImageNormalizer, model=net)``.
A strict load that fails only on normalisation constants is retried non-strict, for ImageNet and
for the entries it lists as known to lack them (``Wong2020Fast``'s ``mu``/``sigma``): the
architecture's own constants are then used. This module does the same, but says what it tolerated,
and refuses a file whose *parameters* do not fit (RobustBench's substring test on the error text
would load such a file non-strict, leaving the network untrained).

The entries whose architecture comes from timm's registry (XCiT, DeiT, AlexNet) are built with
``timm.create_model(pretrained=False)`` and loaded from the file like any other entry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UserError

# robustbench.utils.load_model 1.1.1: ImageNet entries whose files are loaded without the "model." prefix
NO_WRAPPER_PREFIX = frozenset({
    "Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
    "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L",
})
# ... ImageNet Swin entries whose files predate timm's current Swin layout (timm's filter adapts them)
SWIN_FILTERED = frozenset({
    "Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
    "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L",
})
# ... entries (beside every ImageNet one) that it retries non-strict (robustbench.utils._safe_load_state_dict)
KNOWN_NON_STRICT = frozenset({
    "Andriushchenko2020Understanding", "Augustin2020Adversarial", "Engstrom2019Robustness",
    "Pang2020Boosting", "Rice2020Overfitting", "Rony2019Decoupling", "Wong2020Fast",
    "Hendrycks2020AugMix_WRN", "Hendrycks2020AugMix_ResNeXt", "Kireev2021Effectiveness_Gauss50percent",
    "Kireev2021Effectiveness_AugMixNoJSD", "Kireev2021Effectiveness_RLAT",
    "Kireev2021Effectiveness_RLATAugMixNoJSD", "Kireev2021Effectiveness_RLATAugMix", "Chen2020Efficient",
    "Wu2020Adversarial", "Augustin2020Adversarial_34_10", "Augustin2020Adversarial_34_10_extra",
    "Diffenderfer2021Winning_LRR", "Diffenderfer2021Winning_LRR_CARD_Deck", "Diffenderfer2021Winning_Binary",
    "Diffenderfer2021Winning_Binary_CARD_Deck", "Huang2022Revisiting_WRN-A4", "Bai2024MixedNUTS",
})
# the normalisation constants a file may lack (the architecture defines them) or carry unused
_NORM_NAMES = frozenset({"mu", "sigma", "mean", "std"})
# extra tensors some known files carry that the architecture does not use (RobustBench's failure list)
_EXTRA = re.compile(r"^model_preact_hl1\.|\.scores$|^scores$")
_DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def timm_entry_name(dataset: str, threat: str, name: str) -> str:
    """The timm registry name RobustBench tries first for an entry (``load_model``'s ``timm_model_name``)."""
    return f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat.lower()}"


def timm_entry(dataset: str, threat: str, name: str) -> str | None:
    """The timm model an entry is built from, when RobustBench builds it through timm; else None."""
    import timm

    tname = timm_entry_name(dataset, threat, name)
    return tname if timm.is_model(tname) else None


def build_zoo_net(entry: Mapping[str, Any], dataset: str, threat: str, name: str) -> nn.Module:
    """The entry's architecture, untrained (inside ``meta_device()`` it costs no memory)."""
    tname = timm_entry(dataset, threat, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tname is not None:
            import timm

            return timm.create_model(tname, pretrained=False, num_classes=_DATASET_CLASSES[dataset])
        return entry["model"]()


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def unwrap_checkpoint(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The zoo's file layouts, as RobustBench reads them: the state dict (under ``last`` for
    Kireev2021Effectiveness*/Andriushchenko2020Understanding, under ``state_dict`` for Carmon2019Unlabeled
    and others), without the ``module.`` / ``model.`` prefixes of DataParallel and wrapper modules."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("last"), Mapping):
        checkpoint = checkpoint["last"]
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserError("the zoo file holds no state dict of tensors (expected a mapping of names to "
                        "tensors, optionally under 'state_dict' or 'last')")
    return _strip(_strip(checkpoint, "module."), "model.")


def zoo_keys(state: Mapping[str, torch.Tensor], dataset: str, threat: str, name: str,
             net: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The unwrapped state under the names RobustBench loads it with."""
    out = dict(state)
    if timm_entry(dataset, threat, name) is not None:
        # robustbench's timm registrations wrap the network as Sequential(normalize, model): the prefix
        # stripped from every key above goes back on the network's own keys
        if net is not None and {k.split(".", 1)[0] for k in net.state_dict()} == {"normalize", "model"}:
            out = {(k if k.startswith("normalize.") else f"model.{k}"): v for k, v in out.items()}
        return out
    if dataset != "imagenet":
        return out
    if name in SWIN_FILTERED and net is not None and hasattr(net, "model"):
        try:  # as RobustBench: adapt older Swin files to timm's layout; a file already in it is left as is
            from timm.models.swin_transformer import checkpoint_filter_fn

            out = dict(checkpoint_filter_fn(out, net.model))
        except Exception:  # noqa: BLE001 - RobustBench ignores a filter failure too
            pass
    if name not in NO_WRAPPER_PREFIX:
        out = {f"model.{k}": v for k, v in out.items()}
    return out


def _is_norm_constant(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _NORM_NAMES


def fit_zoo_state(net: nn.Module, state: Mapping[str, torch.Tensor], dataset: str, name: str,
                  where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors to load into ``net`` (non-strict is then safe) and notes on what was tolerated.

    Tolerated, for ImageNet entries and RobustBench's known non-strict ones only (as RobustBench):
    normalisation buffers the file lacks (the architecture's own values stay), normalisation constants
    and known extra tensors the architecture does not use. Anything else missing or unexpected, or
    any shape mismatch, is a UserError naming the first keys and the fix.
    """
    own = net.state_dict()
    buffers = {k for k, _ in net.named_buffers()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise UserError(f"{where} does not fit the zoo's {name} architecture: {len(shapes)} tensors differ "
                        f"in shape, e.g. {k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)}: "
                        "it is another model's file; put the zoo's own file there")
    lenient = dataset == "imagenet" or name in KNOWN_NON_STRICT
    kept = [k for k in missing if lenient and k in buffers and _is_norm_constant(k)]
    unused = [k for k in unexpected if lenient and (_is_norm_constant(k) or _EXTRA.search(k))]
    bad_missing = [k for k in missing if k not in kept]
    bad_unexpected = [k for k in unexpected if k not in unused]
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing {len(bad_missing)} (e.g. {', '.join(bad_missing[:3])})")
        if bad_unexpected:
            parts.append(f"unexpected {len(bad_unexpected)} (e.g. {', '.join(bad_unexpected[:3])})")
        if bad_missing and not lenient and all(k in buffers and _is_norm_constant(k) for k in bad_missing):
            fix = (f"the file lacks the normalisation buffers {', '.join(bad_missing)}, which RobustBench "
                   f"tolerates only for its known entries; save the file with them")
        elif not set(state) & set(own):
            fix = ("no key matches: the file is not this entry's (keys of the file, e.g. "
                   f"{', '.join(list(state)[:3])})")
        else:
            fix = "put the zoo's own file for this entry there"
        raise UserError(f"{where} does not fit the zoo's {name} architecture: {'; '.join(parts)}: {fix}")
    notes = []
    if kept:
        notes.append(f"the file lacks {', '.join(kept)}: the architecture's own values are used "
                     "(as RobustBench)")
    if unused:
        notes.append(f"{len(unused)} tensors of the file unused ({', '.join(unused[:4])}) (as RobustBench)")
    return {k: v for k, v in state.items() if k in own}, notes


# ------------------------------------------------------------------------------- building without weights
_HOST_RANGES = (torch.linspace, torch.arange, torch.logspace)


class meta_device(TorchFunctionMode):  # noqa: N801 - used like torch.device("meta") as a context
    """Build modules on the meta device, except the small ranges some builders read back with
    ``.item()``/``.tolist()`` (timm's drop-path schedules), which stay on the CPU."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        from torch.utils._device import _device_constructors

        if func in _device_constructors() and kwargs.get("device") is None and func not in _HOST_RANGES:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)
