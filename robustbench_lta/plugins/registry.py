"""The attack registry: registration, discovery of plugins, lookup by name.

Attacks come from four places, recorded as their ``source`` (see :mod:`robustbench_lta.discovery`,
the one mechanism that also finds models and datasets):

- ``builtin``: every module of :mod:`robustbench_lta.builtin_attacks` (the top-level ``attacks/``
  folder of the repository);
- ``entry-point:<dist>``: installed distributions that declare the entry-point group
  ``robustbench_lta.attacks`` (the entry point may name a module, which registers on import, or
  an :class:`Attack` subclass);
- ``folder:<path>`` / ``file:<path>``: every ``*.py`` file in a folder passed to :func:`discover`
  (``--plugins DIR``), or one file (``--plugins FILE.py``); files whose name starts with ``_`` are
  skipped so a folder can hold private helpers;
- ``python``: classes decorated with :func:`register_attack` anywhere else (notebooks, scripts).

Adapter names ``ta:<ClassName>`` (torchattacks) and ``fb:<ClassName>`` (foolbox 3) are resolved on
demand and never listed.

Duplicate names: registering a name again from the *same module* replaces the old class (so
re-running a notebook cell or re-importing a file works); the same name from any other module (two
files of one plugin folder, two folders, a plugin and a built-in) is a :class:`UserError` naming
both, because silently shadowing an attack would change what a sweep measures without anyone
noticing.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import discovery
from ..errors import UserError
from .base import Attack, AttackKind, ThreatModel

ENTRY_POINT_GROUP = discovery.ENTRY_POINT_GROUPS["attacks"]
BUILTIN_PACKAGE = "robustbench_lta.builtin_attacks"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

A = TypeVar("A", bound=type[Attack])


@dataclass(frozen=True)
class AttackInfo:
    """What :func:`list_attacks` reports about one registered attack."""

    name: str
    threat_model: str
    kind: str
    bounded: bool
    iterative: bool
    source: str
    summary: str
    randomized: bool = False
    multi_eps: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, type[Attack]] = {}
_builtins_loaded = False


def _where(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return f"{cls.__qualname__} in {path or cls.__module__}"


def register_attack(cls: A) -> A:
    """Class decorator: validate an :class:`Attack` subclass and add it to the registry.

    Checks that the class subclasses :class:`Attack`, implements ``perturb``, has a lowercase
    ``name`` (letters, digits, ``-``, ``_``, ``.``), a :class:`ThreatModel`, an :class:`AttackKind`
    and a dict of ``defaults``. Strings such as ``"linf"`` are converted to the enums. Sets
    ``cls.source`` to where it was found. Returns the class unchanged otherwise.
    """
    if not isinstance(cls, type) or not issubclass(cls, Attack):
        raise UserError(f"register_attack expects a subclass of Attack, got {cls!r}")
    where = _where(cls)
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(
            f"attack {where}: name {name!r} is invalid; set the class attribute name to lowercase "
            "letters, digits and dashes, e.g. name = 'my-attack'"
        )
    try:
        cls.threat_model = ThreatModel(cls.threat_model)
    except ValueError:
        raise UserError(
            f"attack '{name}': threat_model {cls.threat_model!r} is invalid; use one of "
            f"{', '.join(t.value for t in ThreatModel)}"
        ) from None
    try:
        cls.kind = AttackKind(cls.kind)
    except ValueError:
        raise UserError(
            f"attack '{name}': kind {cls.kind!r} is invalid; "
            f"use one of {', '.join(k.value for k in AttackKind)}"
        ) from None
    if not isinstance(cls.defaults, dict):
        raise UserError(f"attack '{name}': defaults must be a dict of parameter -> default value")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UserError(f"attack '{name}' ({where}) does not implement {missing}")
    if discovery.current_source() is None:
        # A class registered from plain Python: load the built-ins and entry points first, so a
        # clash with one of them is reported now, not later from an unrelated discover().
        _load_builtins()
        _load_entry_points()
    source = discovery.current_source() or "python"
    existing = _REGISTRY.get(name)
    # Same module (a re-run notebook cell, a reloaded file): replace. Any other module, even from
    # the same plugin folder, is a clash: which one "wins" must never depend on file order.
    if existing is not None and existing is not cls and (
        existing.source != source or existing.__module__ != cls.__module__
    ):
        raise UserError(
            f"attack name '{name}' is defined twice: by {existing.source} ({_where(existing)}) and by "
            f"{source} ({where}); rename one of them"
        )
    cls.source = source
    _REGISTRY[name] = cls
    return cls


# -- discovery ---------------------------------------------------------------------------------
def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    discovery.import_package_modules(BUILTIN_PACKAGE, "attack")
    _builtins_loaded = True


def _register_entry_point_object(obj: Any) -> None:
    if isinstance(obj, type) and issubclass(obj, Attack) and _REGISTRY.get(obj.name) is not obj:
        register_attack(obj)


def _load_entry_points() -> None:
    discovery.load_entry_points("attacks", _register_entry_point_object)


def discover(folders: Iterable[str | Path] = ()) -> list[AttackInfo]:
    """Load built-ins, entry-point plugins and the user's plugin files; return the attack registry.

    ``folders`` are ``--plugins`` paths: folders (every ``*.py`` in them) or single ``.py`` files.
    Whatever those files register is available afterwards: attacks, and also models
    (``@register_model``) and datasets (``@register_dataset``); the model and dataset entry-point
    groups are loaded here too. Idempotent: each file is imported once per process. A file that
    fails to import raises :class:`UserError` naming the file and the error on one line.
    """
    _load_builtins()
    _load_entry_points()
    discovery.load_plugins(folders)
    # Models and datasets: their registries load their own built-ins and entry points lazily; load
    # the entry points now so a broken installed plugin is reported before any work starts.
    from ..data.registry import list_datasets
    from ..models.registry import list_models

    list_models()
    list_datasets()
    return list_attacks()


# -- lookup ------------------------------------------------------------------------------------
def _info(cls: type[Attack]) -> AttackInfo:
    return AttackInfo(
        name=cls.name,
        threat_model=ThreatModel(cls.threat_model).value,
        kind=AttackKind(cls.kind).value,
        bounded=bool(cls.bounded),
        iterative=bool(cls.iterative),
        source=cls.source,
        summary=cls.summary(),
        randomized=bool(cls.randomized),
        multi_eps=bool(cls.multi_eps),
        defaults=dict(cls.defaults),
    )


def list_attacks() -> list[AttackInfo]:
    """Every registered attack (built-ins and entry points load lazily), sorted by name."""
    _load_builtins()
    _load_entry_points()
    return [_info(_REGISTRY[name]) for name in sorted(_REGISTRY)]


def get_attack_class(name: str, params: dict[str, Any] | None = None) -> type[Attack]:
    """The class behind ``name``; adapter names (``ta:X``, ``fb:X``) build one on demand.

    ``params`` matters only for adapters, whose threat model may depend on them (``threat_model``
    or the library's ``norm`` parameter).
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError("attack name must be a non-empty string, e.g. 'pgd-linf' or 'ta:PGD'")
    name = name.strip()
    prefix, sep, rest = name.partition(":")
    if sep and prefix.lower() == "ta":
        from .torchattacks_adapter import torchattacks_attack_class

        return torchattacks_attack_class(rest, params or {})
    if sep and prefix.lower() == "fb":
        from .foolbox_adapter import foolbox_attack_class

        return foolbox_attack_class(rest, params or {})
    _load_builtins()
    _load_entry_points()
    cls = _REGISTRY.get(name) or _REGISTRY.get(name.lower())
    if cls is None:
        close = difflib.get_close_matches(name.lower(), sorted(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"unknown attack '{name}': {hint}run `robustbench-lta attacks` to list them, load your own "
            "with --plugins DIR, or use ta:ClassName / fb:ClassName for torchattacks / foolbox"
        )
    return cls


def get_attack(name: str, seed: int = 0, **params: Any) -> Attack:
    """Build the attack ``name`` with ``seed`` and parameters (unknown parameters: UserError)."""
    cls = get_attack_class(name, params)
    return cls(seed=seed, **params)
