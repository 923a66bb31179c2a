"""When an attack cannot attack a model at all, and the one way attacks ask a model for attention."""

from __future__ import annotations

import torch
from torch import nn


class NotApplicable(TypeError):
    """Raise from ``perturb`` when this attack cannot attack this model at all.

    The typical case: an attention attack handed a model without attention maps. The engine records
    every budget of the cell as ``not-applicable`` with the message, never retries it and does not
    count it against the sweep (the CLI's exit status stays 0); the report lists it as a note. Any
    other exception marks the cell ``failed`` (retried on the next run, exit status 3). A subclass of
    ``TypeError``, so code that caught the old ``TypeError`` still does.
    """


def has_attention(model: nn.Module) -> bool:
    """Whether ``model(x, return_attention=True)`` is supported; the engine may hand attacks a wrapper
    (autocast, normalisation) whose ``inner`` is the user's model, so both are asked."""
    has = getattr(model, "has_attention", None)
    if has is None:
        has = getattr(getattr(model, "inner", None), "has_attention", False)
    return bool(has)


def attention_of(model: nn.Module, x: torch.Tensor, attack: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model(x, return_attention=True)`` as ``(logits, maps)``.

    Raises :class:`NotApplicable` naming ``attack`` when the model has no attention maps, and
    ``TypeError`` (the cell fails: a model bug) when it claims maps but returns something else.
    """
    if not has_attention(model):
        raise NotApplicable(f"{attack} needs a model with attention maps (model(x, return_attention=True)); "
                            f"{type(getattr(model, 'inner', model)).__name__} has none: use pgd-linf instead")
    out = model(x, return_attention=True)
    if not isinstance(out, tuple | list) or len(out) != 2 or len(out[1]) == 0:
        raise TypeError("model(x, return_attention=True) must return (logits, [maps]) with at least one map")
    return out[0], list(out[1])
