"""How models, datasets and attacks are found: one mechanism for all three kinds.

Each kind has a registry (``models/registry.py``, ``data/registry.py``, ``plugins/registry.py``)
that knows nothing about its implementations. Implementations register themselves when their module
is imported, and this module decides which modules get imported and records where each came from:

- ``builtin``: every module of the kind's own package (scanned with :mod:`pkgutil`, so adding a
  model, dataset or attack to the project is adding one file, with no second edit);
- ``entry-point:<dist>``: installed distributions that declare the entry-point group
  ``robustbench_lta.models``, ``robustbench_lta.datasets`` or ``robustbench_lta.attacks``;
- ``folder:<path>`` / ``file:<path>``: a user's ``--plugins PATH`` (a ``.py`` file, or every
  ``*.py`` in a folder except names starting with ``_``); one file may register any mix of models,
  datasets and attacks;
- ``python``: anything registered from plain Python (a script, a notebook, an imported module).

This module sits below every registry (it imports none of them), so there is no import circle
between a registry, its implementations and the code that finds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

#: kind -> entry-point group an installed package declares to contribute to that kind.
ENTRY_POINT_GROUPS: dict[str, str] = {
    "attacks": "robustbench_lta.attacks",
    "models": "robustbench_lta.models",
    "datasets": "robustbench_lta.datasets",
}

_current_source: list[str] = []  # stack: the source being imported right now
_loaded_files: dict[Path, str] = {}  # plugin file -> module name it was imported as
_loaded_groups: set[str] = set()
_loading_groups: set[str] = set()


@dataclass(frozen=True)
class Origin:
    """Where one registered model, dataset or attack came from (recorded in model cards)."""

    source: str  # builtin | entry-point:<dist> | folder:<path> | file:<path> | python
    module: str  # the Python module that registered it
    file: str | None  # that module's file, where it has one

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "module": self.module, "file": self.file}


@contextlib.contextmanager
def loading_from(source: str) -> Iterator[None]:
    """Everything registered inside this block is recorded as coming from ``source``."""
    _current_source.append(source)
    try:
        yield
    finally:
        _current_source.pop()


def current_source() -> str | None:
    """The source being loaded right now, or None outside any discovery (plain Python)."""
    return _current_source[-1] if _current_source else None


def origin_of(obj: Any) -> Origin:
    """The :class:`Origin` of a class or function being registered now."""
    module = getattr(obj, "__module__", None) or "?"
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    return Origin(current_source() or "python", module, str(path) if path else None)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (for errors that wrap a plugin's exception)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------ built-ins
def import_package_modules(package: str, what: str) -> None:
    """Import every module of ``package`` (names starting with ``_`` skipped) as ``builtin``.

    Already imported modules are not run again. ``what`` names the kind in error messages.
    """
    pkg = importlib.import_module(package)
    with loading_from("builtin"):
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            name = f"{package}.{info.name}"
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"built-in {what} module {name} failed to import: {one_line(exc)}") from exc


# --------------------------------------------------------------------------------- entry points
def load_entry_points(kind: str, register: Callable[[Any], None] | None = None) -> None:
    """Load every entry point of ``kind``'s group once per process.

    An entry point may name a module (which registers on import) or an object; objects are handed
    to ``register`` (e.g. an Attack subclass to ``register_attack``).
    """
    group = ENTRY_POINT_GROUPS[kind]
    if group in _loaded_groups or group in _loading_groups:
        return
    _loading_groups.add(group)
    try:
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None) or ep.value
            with loading_from(f"entry-point:{dist_name}"):
                try:
                    obj = ep.load()
                except UserError:
                    raise
                except Exception as exc:
                    raise UserError(
                        f"{kind[:-1]} plugin entry point '{ep.name}' ({ep.value}, from {dist_name}) failed "
                        f"to load: {one_line(exc)}; fix or uninstall {dist_name}"
                    ) from exc
                if register is not None:
                    register(obj)
        _loaded_groups.add(group)
    finally:
        _loading_groups.discard(group)


# ---------------------------------------------------------------------------------- user files
def _module_name_for(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"robustbench_lta_plugin_{digest}_{stem}"


def plugin_files(path: str | Path) -> tuple[str, list[Path]]:
    """``(source, files)`` for one ``--plugins`` argument: a ``.py`` file or a folder of them."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(
            f"plugin path {root} does not exist; pass an existing folder or .py file to --plugins"
        )
    root = root.resolve()
    if root.is_file():
        if root.suffix != ".py":
            raise UserError(f"plugin path {root} is not a folder or a .py file")
        return f"file:{root}", [root]
    files = sorted(p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("_"))
    return f"folder:{root}", files


def load_plugin_file(path: Path, source: str) -> str:
    """Import one plugin file once per process (under ``source``); returns its module name."""
    path = path.resolve()
    if path in _loaded_files:
        return _loaded_files[path]
    module_name = _module_name_for(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugin file {path} cannot be imported (not a Python source file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with loading_from(source):
        try:
            spec.loader.exec_module(module)
        except UserError as exc:
            sys.modules.pop(module_name, None)
            raise UserError(f"plugin file {path}: {exc}") from None
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            raise UserError(f"plugin file {path} failed to import: {one_line(exc)}") from exc
    _loaded_files[path] = module_name
    return module_name


def load_plugins(paths: Iterable[str | Path] = ()) -> list[Path]:
    """Import every plugin file named by ``paths`` (files or folders); returns the files.

    This is the one discovery function for user code: whatever a file registers (models with
    ``@register_model``, datasets with ``@register_dataset``, attacks with ``@register_attack``) is
    available afterwards. Idempotent: a file is imported once per process however it is named.
    """
    files: list[Path] = []
    for path in paths or ():
        source, found = plugin_files(path)
        for file in found:
            load_plugin_file(file, source)
            files.append(file)
    return files


def plugin_hint(origin: dict[str, Any] | None) -> str:
    """What to pass so that a registered thing with this recorded origin is available again."""
    if not origin:
        return "register it with @register_model in a file and pass that file to --plugins"
    source = str(origin.get("source") or "")
    file = origin.get("file")
    if source.startswith(("folder:", "file:")) and file:
        return f"pass --plugins {file} (it was registered by that file)"
    if source.startswith("entry-point:"):
        dist = source.split(":", 1)[1]
        return f"install the package {dist!r}, which registered it through an entry point"
    if source == "builtin":
        return f"it was a built-in of another robustbench-lta version (module {origin.get('module')})"
    module = origin.get("module")
    if module and module != "__main__" and not str(module).startswith("robustbench_lta_plugin_"):
        hint = f"import {module} before loading it"
        return hint + (f", or pass --plugins {file}" if file else "")
    if file:
        return f"pass --plugins {file} (it was registered by that file)"
    return "register it again with @register_model, or pass the file that does to --plugins"
