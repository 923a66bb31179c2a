"""timm-style model registry: ``register_model``, ``create_model``, ``list_models``, ``model_info``.

A builder is any callable ``fn(num_classes=10, width=1.0, **kw) -> nn.Module``::

    from robustbench_lta import register_model, create_model

    @register_model(family="custom")
    def my_net(num_classes=10, width=1.0, **kw):
        return MyNet(num_classes, width)

    model = create_model("my_net", num_classes=100, width=0.5)

``create_model`` stamps the model with ``registry_name`` and ``registry_kwargs`` (JSON-friendly
``num_classes``, ``width`` and the extra keywords) so a checkpoint card can rebuild it. The
training code passes the dataset's ``mean``/``std``; a builder that does not accept them gets its
module wrapped in :class:`~robustbench_lta.models.base.NormalizedModel`, which normalises [0,1]
inputs before calling it (the project's convention).

Where builders come from (see :mod:`robustbench_lta.discovery`): every module of this package
(importing :mod:`robustbench_lta.models` scans it, so a new architecture is one new file), the
entry-point group ``robustbench_lta.models`` of installed packages, a user's ``--plugins`` file or
folder, or plain Python. Each :class:`ModelInfo` records its :class:`~robustbench_lta.discovery.Origin`,
which the checkpoint card keeps so that loading a checkpoint can name the plugin it needs.

This module imports none of the implementations: they import it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from .. import discovery
from ..errors import UserError
from .base import NormalizedModel, check_num_classes, check_width, parameter_count

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "parameter_count",
    "register_model",
]

FAMILIES = ("vgg", "resnet", "custom")

Builder = Callable[..., nn.Module]
F = TypeVar("F", bound=Builder)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name."""

    name: str
    family: str
    attention_levels: int
    compatibility: str | None
    head: str | None
    builder: Builder
    origin: discovery.Origin | None = None

    @property
    def source(self) -> str:
        """``builtin``, ``entry-point:<dist>``, ``folder:<path>``, ``file:<path>`` or ``python``."""
        return self.origin.source if self.origin else "python"

    @property
    def has_attention(self) -> bool:
        return self.attention_levels > 0

    @property
    def description(self) -> str:
        """First line of the builder's docstring ('' if none)."""
        doc = inspect.getdoc(self.builder) or ""
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, ModelInfo] = {}


def _origin(fn: Builder) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_model(
    fn: F | None = None,
    *,
    name: str | None = None,
    family: str = "custom",
    attention_levels: int = 0,
    compatibility: str | None = None,
    head: str | None = None,
) -> F | Callable[[F], F]:
    """Register a model builder; usable as ``@register_model`` or ``@register_model(name=..., ...)``.

    Args:
        fn: the builder ``fn(num_classes=10, width=1.0, **kw) -> nn.Module``.
        name: registry name (default: ``fn.__name__``).
        family: ``"vgg"``, ``"resnet"`` or ``"custom"`` (free text is accepted for user models).
        attention_levels: number of attention maps the model returns (0 for baselines).
        compatibility: attention compatibility (``"dp"`` / ``"pc"``) or None.
        head: attention head (``"concat"`` / ``"indep"``) or None.

    Re-registering a name with a builder of the same module and qualified name (a reloaded module
    or a re-run notebook cell) replaces it; a different builder under a taken name is a UserError.
    Returns the builder unchanged.
    """

    def decorate(builder: F) -> F:
        if not callable(builder):
            raise UserError(f"register_model needs a callable builder, got {builder!r}")
        key = name or getattr(builder, "__name__", None)
        if not key or not isinstance(key, str):
            raise UserError("register_model: give the model a name with register_model(name='...')")
        old = _REGISTRY.get(key)
        if old is not None and _origin(old.builder) != _origin(builder):
            where = f" ({old.origin.file})" if old.origin and old.origin.file else ""
            raise UserError(
                f"model name {key!r} is already registered by {_origin(old.builder)}{where}, "
                f"source {old.source}: choose another name with register_model(name='...')"
            )
        levels = int(attention_levels or 0)
        if levels < 0:
            raise UserError(f"register_model({key!r}): attention_levels must be >= 0, got {attention_levels}")
        _REGISTRY[key] = ModelInfo(
            key, str(family), levels, compatibility, head, builder, discovery.origin_of(builder)
        )
        return builder

    if fn is not None:
        return decorate(fn)
    return decorate


def register_attention_variants(
    model_class: Callable[..., nn.Module],
    *,
    prefix: str,
    family: str,
    variants: Iterable[tuple[int, str, str]],
    title: str,
    module: str,
) -> None:
    """Register ``{prefix}_att{levels}_{head}_{compatibility}`` for each ``(levels, head, compatibility)``.

    ``model_class(num_classes=, width=, attention_levels=, compatibility=, head=, **kw)`` builds the
    model; ``title`` starts each builder's docstring and ``module`` (the caller's ``__name__``) is
    the builder's origin for re-registration.
    """

    def builder(levels: int, head: str, compatibility: str) -> Builder:
        def build(num_classes: int = 10, width: float = 1.0, **kw: Any) -> nn.Module:
            return model_class(
                num_classes=num_classes,
                width=width,
                attention_levels=levels,
                compatibility=compatibility,
                head=head,
                **kw,
            )

        return build

    for levels, head, compatibility in variants:
        name = f"{prefix}_att{levels}_{head}_{compatibility}"
        build = builder(levels, head, compatibility)
        build.__name__ = build.__qualname__ = name
        build.__module__ = module
        build.__doc__ = (
            f"{title} with LTPA attention: {levels} level(s), {compatibility} compatibility, {head} head."
        )
        register_model(
            build, name=name, family=family, attention_levels=levels, compatibility=compatibility, head=head
        )


def _load_entry_points() -> None:
    # Installed packages' models; the built-ins are registered by importing this package.
    discovery.load_entry_points("models")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the fnmatch ``pattern`` (e.g. ``"vgg16_att*"``), sorted."""
    _load_entry_points()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered name; unknown names raise UserError with suggestions."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UserError(
        f"unknown model {name!r}: {hint}run `robustbench-lta models` to list the registered models; "
        "for your own architecture, pass the file that registers it with --plugins FILE"
    )


def _json_friendly(value: Any) -> Any:
    """Tuples -> lists, tensors/NumPy values -> Python values, recursively (for ``registry_kwargs``)."""
    if isinstance(value, dict):
        return {str(k): _json_friendly(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_friendly(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist) and not isinstance(value, str | bytes):
        return _json_friendly(value.tolist())
    return value


def _accepts(builder: Builder, arg: str) -> bool:
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # builtins / C callables: assume they accept everything
        return True
    if arg in params and params[arg].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.VAR_POSITIONAL,
    ):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create_model(name: str, num_classes: int = 10, width: float = 1.0, **kw: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` logits and channel multiplier ``width``.

    Extra keywords go to the builder (the built-ins accept ``mean``/``std`` normalisation statistics).
    The result carries ``registry_name`` and ``registry_kwargs`` (``num_classes``, ``width`` and the
    extra keywords, JSON-friendly) so it can be rebuilt from a checkpoint card.
    """
    info = model_info(name)
    num_classes = check_num_classes(num_classes)
    width = check_width(width)
    call_kw: dict[str, Any] = {"num_classes": num_classes, "width": width, **kw}
    builder = info.builder
    wrap_stats: dict[str, Any] = {}
    for arg in list(call_kw):
        if _accepts(builder, arg):
            continue
        if arg in ("mean", "std"):
            wrap_stats[arg] = call_kw.pop(arg)
        elif arg == "width" and width == 1.0:
            call_kw.pop(arg)
        else:
            raise UserError(
                f"model {name!r} does not accept the argument {arg!r}: remove it from the model settings"
            )
    model = builder(**call_kw)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"the builder of model {name!r} returned {type(model).__name__}, not a torch nn.Module"
        )
    if wrap_stats:
        model = NormalizedModel(model, num_classes=num_classes, **wrap_stats)
    model.registry_name = name
    # where the architecture came from, so a checkpoint card can name the plugin it needs
    model.registry_origin = info.origin.as_dict() if info.origin else None
    model.registry_kwargs = _json_friendly({"num_classes": num_classes, "width": width, **kw})
    return model
