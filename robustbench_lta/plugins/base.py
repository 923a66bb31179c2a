"""The attack interface every plugin implements, built-in or user-written.

An attack is a small class with a name, a threat model and parameters with defaults, called on a
batch as ``attack(model, x, y, eps) -> x_adv``. Images are float tensors in [0,1] (N,C,H,W); the
model maps them to logits and is already in eval mode. ``eps`` is on the [0,1] scale in the
attack's norm. Attacks that can share work across budgets set ``multi_eps = True`` and override
:meth:`Attack.perturb_many`, which returns one adversarial batch per eps.

Minimal-perturbation attacks (C&W, DeepFool, Boundary) set ``bounded = False``: they ignore eps,
and the engine records the norm of what they found instead of checking it against a budget.

Parameters are declared as a typed model: set ``Params`` to a subclass of :class:`AttackParams`
(a pydantic model: strict types, unknown keys refused, floats finite; add ranges with
``Field(ge=1)``) or to a dataclass. Building the attack validates the parameters, so a bad value
(``steps=-1``, ``steps='abc'``, ``steps=2.5``) is one :class:`UserError` at plan time, before any
model is loaded, for the CLI, YAML configs and the Python API alike. Attacks without ``Params``
keep the older ``defaults`` dict: unknown keys are refused, values are not checked.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import difflib
import functools
import inspect
import operator
import typing
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from torch import nn

from ..errors import UserError


class ThreatModel(str, Enum):
    """Which norm bounds the perturbation."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"
    NONE = "none"


class AttackKind(str, Enum):
    """What the attack may see of the model; the sanity checks compare kinds."""

    WHITE_BOX = "white-box"          # gradients
    SCORE = "black-box-score"        # logits/probabilities only
    DECISION = "black-box-decision"  # predicted label only
    RANDOM = "random"                # ignores the model (noise baselines)


class AttackParams(BaseModel):
    """Base of an attack's typed parameters; subclass it as ``Params`` inside the attack class.

    Strict: ``steps: int`` refuses ``2.5``, ``"5"`` and ``True``; ``float`` fields take ints but no
    NaN or infinity; unknown keys are refused. Ranges go in ``Field(...)``, e.g.
    ``steps: int = Field(10, ge=1)``.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, protected_namespaces=()
    )


def _schema_defaults(schema: type) -> dict[str, Any]:
    """Parameter name -> default (None where the schema has none) of a Params model/dataclass."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return {
            name: (None if f.is_required() else f.get_default(call_default_factory=True))
            for name, f in schema.model_fields.items()
        }
    if dataclasses.is_dataclass(schema):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(schema):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
        return out
    raise TypeError(f"Params must be an AttackParams (pydantic) subclass or a dataclass, got {schema!r}")


@functools.cache
def _as_model(schema: type) -> type[BaseModel]:
    """The pydantic model that validates ``schema``; a dataclass gets a strict twin (same fields)."""
    if issubclass(schema, BaseModel):
        return schema
    hints = typing.get_type_hints(schema)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints.get(f.name, Any), f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints.get(f.name, Any), Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (hints.get(f.name, Any), ...)
    return create_model(f"{schema.__name__}Params", __base__=AttackParams, **fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_attack_params(
    attack_name: str, schema: type | None, defaults: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """Check ``params`` against an attack's ``Params`` schema (or its ``defaults`` keys).

    Returns the full parameter dict (defaults filled in). Raises :class:`UserError` with one line
    naming the attack, the parameter, the value, what is wrong and the known parameters.
    """
    known = sorted(_schema_defaults(schema) if schema is not None else defaults)
    unknown = sorted(str(k) for k in set(params) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"attack '{attack_name}': unknown parameter(s) {', '.join(unknown)}{hint} "
            f"(known: {', '.join(known) or 'none'})"
        )
    if schema is None:
        return {**defaults, **params}
    try:
        return _as_model(schema).model_validate(params).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(all)"
        if err["type"] == "missing":
            raise UserError(f"attack '{attack_name}': parameter {key} must be set (no default)") from None
        shown = f"={_short(params[key])}" if key in params else ""
        raise UserError(
            f"attack '{attack_name}': bad parameter {key}{shown}: {err['msg']} "
            f"(default {_short(_schema_defaults(schema).get(key))}; see `robustbench-lta attacks`)"
        ) from None


_COUNT_SUFFIXES = ("steps", "iter", "iters", "iterations", "queries", "restarts", "repeats", "directions")
_INT_PREFIXES = ("n_", "num_", "max_", "nb_")
_INT_SUFFIXES = (*_COUNT_SUFFIXES, "classes", "size", "samples", "seed")


def params_from_signature(model_name: str, defaults: dict[str, Any]) -> type[AttackParams]:
    """A typed ``Params`` model for a third-party class, from its constructor's defaults.

    The adapters (``ta:``, ``fb:``) use it so that library parameters are checked at plan time
    too. Libraries rarely annotate types, so each default's type decides: a bool takes only bools;
    an int whose name says it counts (``steps``, ``n_queries``, ``max_iter``, ``n_classes``,
    ``seed``...) takes only ints, iteration counts only >= 1; any other number takes a finite
    int or float; a string takes a string; ``None`` or anything else is passed through unchecked.
    """
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        counts = key.endswith(_COUNT_SUFFIXES)
        intlike = counts or key.startswith(_INT_PREFIXES) or key.endswith(_INT_SUFFIXES) or key == "k"
        if isinstance(default, bool):
            fields[key] = (bool, default)
        elif isinstance(default, int) and intlike:
            fields[key] = (int, Field(default, ge=1) if counts else default)
        elif isinstance(default, (int, float)):
            fields[key] = (float, default)
        elif isinstance(default, str):
            fields[key] = (str, default)
        else:
            fields[key] = (Any, default)
    return create_model(model_name, __base__=AttackParams, **fields)


class Attack(abc.ABC):
    """Base class for attacks. Subclass, set the class attributes, implement :meth:`perturb`.

    Class attributes:
        name: registry name (lowercase, dashes), e.g. ``"pgd-linf"``.
        threat_model: the norm the budget is measured in.
        kind: white-box, black-box (score/decision) or random.
        bounded: False for minimal-perturbation attacks that ignore eps.
        iterative: True for multi-step attacks (sanity: never weaker than FGSM per sample).
        randomized: True when results depend on the seed.
        multi_eps: True when :meth:`perturb_many` shares work across eps (one call, all eps).
        Params: the typed parameters, an :class:`AttackParams` subclass (or a dataclass); when
            set, ``defaults`` is derived from it and every parameter is validated on construction.
        defaults: parameter names and default values; constructor keywords override them.
    """

    name: ClassVar[str] = ""
    threat_model: ClassVar[ThreatModel] = ThreatModel.LINF
    kind: ClassVar[AttackKind] = AttackKind.WHITE_BOX
    bounded: ClassVar[bool] = True
    iterative: ClassVar[bool] = False
    randomized: ClassVar[bool] = False
    multi_eps: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    Params: ClassVar[type | None] = None

    #: where the registry found this attack ("builtin", "entry-point:...", "folder:PATH", "adapter")
    source: str = "python"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("Params") is not None:
            # one source of truth: the listing's defaults come from the typed declaration
            try:
                cls.defaults = _schema_defaults(cls.Params)
            except TypeError as exc:
                raise UserError(f"attack class {cls.__qualname__}: {exc}") from None

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        try:
            if isinstance(seed, bool):
                raise TypeError
            self.seed = operator.index(seed)
        except TypeError:
            raise UserError(f"attack '{self.name}': seed must be an integer, got {seed!r}") from None
        self.params: dict[str, Any] = validate_attack_params(self.name, self.Params, self.defaults, params)

    # -- the one method a plugin must write ---------------------------------------------------
    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Return adversarial images for ``x`` (labels ``y``) within ``eps`` in ``threat_model``."""

    def perturb_many(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]
    ) -> list[torch.Tensor]:
        """One adversarial batch per eps. Override when work can be shared across eps."""
        return [self.perturb(model, x, y, float(eps)) for eps in eps_list]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.perturb(model, x, y, eps)

    # -- helpers for plugin authors ----------------------------------------------------------
    def generator(self, device: torch.device | str) -> torch.Generator:
        """A generator seeded with this attack's seed, for reproducible random starts/noise."""
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen

    @contextlib.contextmanager
    def global_rng(self, device: torch.device | str = "cpu") -> Iterator[None]:
        """Fork torch's global RNG, seed it with this attack's seed, restore it on exit.

        For third-party code (torchattacks, foolbox) that draws from the global generator: the
        attack becomes reproducible and the caller's RNG stream is left exactly as it was.
        """
        dev = torch.device(device)
        devices = []
        if dev.type == "cuda":
            devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    @staticmethod
    @contextlib.contextmanager
    def frozen(model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily turn off ``requires_grad`` on the model's parameters (restored on exit).

        Attacks only need gradients w.r.t. the input; libraries that call ``loss.backward()``
        would otherwise accumulate (and leave behind) ``.grad`` on every weight.
        """
        params = list(model.parameters())
        saved = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in zip(params, saved, strict=True):
                p.requires_grad_(flag)

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(name={self.name!r}, {params})"
