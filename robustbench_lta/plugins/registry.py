"""The attack registry: registration, discovery of plugins, lookup by name.

Attacks come from four places, recorded as their ``source``:

- ``builtin``: every module of :mod:`robustbench_lta.builtin_attacks` (the top-level ``attacks/``
  folder of the repository);
- ``entry-point:<dist>``: installed distributions that declare the entry-point group
  ``robustbench_lta.attacks`` (the entry point may name a module, which registers on import, or
  an :class:`Attack` subclass);
- ``folder:<path>``: every ``*.py`` file in a folder passed to :func:`discover` (``--plugins DIR``);
  files whose name starts with ``_`` are skipped so a folder can hold private helpers;
- ``python``: classes decorated with :func:`register_attack` anywhere else (notebooks, scripts).

Adapter names ``ta:<ClassName>`` (torchattacks) and ``fb:<ClassName>`` (foolbox 3) are resolved on
demand and never listed.

Duplicate names: registering a name again from the *same* source replaces the old class (so
re-running a notebook cell or re-importing a file works); the same name from a *different* source
is a :class:`UserError` naming both, because silently shadowing an attack would change what a
sweep measures without anyone noticing.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError
from .base import Attack, AttackKind, ThreatModel

ENTRY_POINT_GROUP = "robustbench_lta.attacks"
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
_current_source: list[str] = []  # stack: the source being imported right now
_loaded_files: set[Path] = set()
_discovered_folder_sets: set[tuple[Path, ...]] = set()
_builtins_loaded = False
_entry_points_loaded = False


@contextlib.contextmanager
def _source(source: str) -> Iterator[None]:
    _current_source.append(source)
    try:
        yield
    finally:
        _current_source.pop()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    if not _current_source:
        # A class registered from plain Python: load the built-ins and entry points first, so a
        # clash with one of them is reported now, not later from an unrelated discover().
        _load_builtins()
        _load_entry_points()
    source = _current_source[-1] if _current_source else "python"
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.source != source:
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
    package = importlib.import_module(BUILTIN_PACKAGE)
    with _source("builtin"):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            module_name = f"{BUILTIN_PACKAGE}.{info.name}"
            try:
                importlib.import_module(module_name)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(
                    f"built-in attack module {module_name} failed to import: {_one_line(exc)}"
                ) from exc
    _builtins_loaded = True


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None) or ep.value
        with _source(f"entry-point:{dist_name}"):
            try:
                obj = ep.load()
            except UserError:
                raise
            except Exception as exc:
                raise UserError(
                    f"attack plugin entry point '{ep.name}' ({ep.value}, from {dist_name}) failed to load: "
                    f"{_one_line(exc)}"
                ) from exc
            if isinstance(obj, type) and issubclass(obj, Attack) and _REGISTRY.get(obj.name) is not obj:
                register_attack(obj)
    _entry_points_loaded = True


def _module_name_for(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"robustbench_lta_plugin_{digest}_{stem}"


def _load_file(path: Path, source: str) -> None:
    if path in _loaded_files:
        return
    module_name = _module_name_for(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugin file {path} cannot be imported (not a Python source file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with _source(source):
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            raise UserError(f"plugin file {path} failed to import: {_one_line(exc)}") from exc
    _loaded_files.add(path)


def _plugin_files(folder: str | Path) -> tuple[Path, list[Path]]:
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserError(f"plugin folder {root} does not exist; pass an existing folder to --plugins")
    root = root.resolve()
    if root.is_file():
        if root.suffix != ".py":
            raise UserError(f"plugin path {root} is not a folder or a .py file")
        return root.parent, [root]
    files = sorted(p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("_"))
    return root, files


def discover(folders: Iterable[str | Path] = ()) -> list[AttackInfo]:
    """Load built-ins, entry-point plugins and every ``*.py`` in ``folders``; return the registry.

    Idempotent: each file is imported once per process, and a folder set already discovered is
    not scanned again. A file that fails to import raises :class:`UserError` naming the file and
    the error on one line.
    """
    _load_builtins()
    _load_entry_points()
    folder_list = [Path(f) for f in (folders or ())]
    key = tuple(sorted(p.expanduser().resolve() for p in folder_list))
    if key and key not in _discovered_folder_sets:
        for folder in folder_list:
            root, files = _plugin_files(folder)
            for path in files:
                _load_file(path, f"folder:{root}")
        _discovered_folder_sets.add(key)
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
