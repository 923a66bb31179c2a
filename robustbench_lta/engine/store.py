"""The results folder on disk: unit files written atomically by workers, a lock, the manifest.

Layout (:class:`~robustbench_lta.results.ResultsLayout`): ``units/CELL_ID/START-STOP.parquet`` holds a
unit's per-sample rows and ``units/CELL_ID/START-STOP.json`` its per-eps status, work and key. The
JSON is written last and is the commit marker: a unit counts as finished only when its JSON exists
and carries the cell's key, so a ``kill -9`` at any moment leaves either a finished unit or none.
Only the driver writes the tables and the manifest; the manifest says ``running`` until every
table is written and then lists each table's sha256, so a reader can tell a folder whose tables and
manifest describe different sweeps.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..results import ResultsLayout
from ..utils import atomic_write_bytes, atomic_write_dataframe, atomic_write_json, sha256_file


def _disk_error(path: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(f"no space left on the device holding {path}: free some space and re-run "
                         "(finished units are kept and reused)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write to {path} ({exc.strerror}): choose a writable --out folder")
    return UserError(f"cannot write to {path} ({exc.strerror or exc}): check the --out folder")


class ResultStore:
    def __init__(self, out_dir: str | Path) -> None:
        self.layout = ResultsLayout(Path(out_dir))
        self.root = self.layout.root
        for parent in [self.root, *self.root.parents]:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"results path {self.root} lies below {parent}, which is a file: "
                                "choose another --out")
        try:
            self.layout.units.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(self.root, exc) from None

    # -- units ------------------------------------------------------------------------------------
    def _unit_paths(self, cell_id: str, unit_id: str) -> tuple[Path, Path, Path]:
        d = self.layout.cell_dir(cell_id)
        return d / f"{unit_id}.parquet", d / f"{unit_id}.attention.parquet", d / f"{unit_id}.json"

    def stored_units(self, cell_id: str, key: str, retry_invalid: bool = False
                     ) -> list[tuple[int, int, dict[str, Any]]]:
        """Finished units of a cell under ``key``: (start, stop, meta). Failed units are not returned
        (they are retried); invalid ones only when ``retry_invalid`` is off."""
        d = self.layout.cell_dir(cell_id)
        out = []
        if not d.is_dir():
            return out
        for meta_path in sorted(d.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue  # unreadable leftovers are recomputed, never trusted
            if meta.get("key") != key or not (d / f"{meta_path.stem}.parquet").is_file():
                continue
            statuses = {e["status"] for e in meta.get("eps_status", [])}
            if "failed" in statuses or (retry_invalid and "invalid" in statuses):
                continue
            out.append((int(meta["start"]), int(meta["stop"]), meta))
        return out

    def write_unit(self, cell_id: str, unit_id: str, meta: dict[str, Any], samples: pd.DataFrame,
                   attention: pd.DataFrame | None, explorer: dict[str, np.ndarray] | None = None) -> None:
        """A unit's files, each atomically; the json marker last, so a unit is whole or absent."""
        table, att, meta_path = self._unit_paths(cell_id, unit_id)
        images = self.layout.unit_explorer_npz(cell_id, unit_id)
        try:
            atomic_write_dataframe(table, samples)
            if attention is not None and len(attention):
                atomic_write_dataframe(att, attention)
            else:
                att.unlink(missing_ok=True)
            if explorer is not None:
                from .explorer import npz_bytes

                atomic_write_bytes(images, npz_bytes(explorer))
            else:  # a recomputed unit must not keep an earlier run's images
                images.unlink(missing_ok=True)
            atomic_write_json(meta_path, meta)
        except OSError as exc:
            raise _disk_error(table, exc) from None

    def unit_tables(self, cell_id: str, unit_id: str) -> tuple[Path, Path]:
        table, att, _ = self._unit_paths(cell_id, unit_id)
        return table, att

    # -- per-model pass -----------------------------------------------------------------------------
    def model_pass_path(self, model: str, key: str) -> Path:
        from ..results import safe_name

        return self.layout.units / f"model-{safe_name(model)}-{key[:16]}.parquet"

    def write_attention_arrays(self, model: str, arrays: dict[str, np.ndarray]) -> Path:
        import io

        buf = io.BytesIO()
        # uncompressed: float images and maps shrink about 2x under zlib, at 20 ms a model (measured:
        # CIFAR-10, 8 images, 3 budgets), a tenth of a small sweep's model pass
        np.savez(buf, **arrays)
        path = self.layout.attention_npz(model)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as exc:
            raise _disk_error(path, exc) from None
        return path

    def read_attention_key(self, model: str) -> str | None:
        path = self.layout.attention_npz(model)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return str(data["key"]) if "key" in data else None
        except (OSError, ValueError, KeyError):
            return None

    # -- tables and manifest ------------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame, csv_too: bool = False) -> None:
        path = self.layout.table(name)
        try:
            atomic_write_dataframe(path, df)
            if csv_too:
                atomic_write_dataframe(self.layout.table(name, ".csv"), df)
        except OSError as exc:
            raise _disk_error(path, exc) from None

    def table_digests(self, names: tuple[str, ...]) -> dict[str, str]:
        return {n: sha256_file(self.layout.table(n)) for n in names if self.layout.table(n).is_file()}

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.layout.manifest.read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.layout.manifest, manifest)
        except OSError as exc:
            raise _disk_error(self.layout.manifest, exc) from None

    # -- leftovers of killed writers ---------------------------------------------------------------
    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes that never finished (a worker or driver killed mid-write).

        Only names ``atomic_write_bytes``/``tempfile.mkstemp`` give (``.NAME.XXXXXXXX.tmp``) in the
        folder, its ``units/`` and ``explorer/`` trees and ``attention/``: nothing else is touched. Call it
        only while
        holding the lock (no other sweep writes here) and before any worker of this sweep starts.
        """
        removed: list[Path] = []
        places = [(self.root, False), (self.layout.units, True), (self.layout.attention_dir, False),
                  (self.layout.explorer_dir, True)]
        for folder, deep in places:
            if not folder.is_dir():
                continue
            for path in folder.rglob(".*.tmp") if deep else folder.glob(".*.tmp"):
                if _TMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    removed.append(path)
        return removed

    # -- one sweep at a time ------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Refuse a second sweep into the same folder while one runs (a stale lock is taken over).

        A lock whose holder runs on another host cannot be checked: it blocks until the user says that
        sweep is gone (:data:`BREAK_LOCK_ENV`, or :func:`break_lock`). Once the lock is held, the
        temporaries of killed writers are removed.
        """
        path = self.layout.lock
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder):
                    if not (_truthy(os.environ.get(BREAK_LOCK_ENV)) and not _on_this_host(holder)):
                        raise UserError(_locked_message(holder, path, self.root)) from None
                    warnings.warn(f"{BREAK_LOCK_ENV} is set: taking over the lock of {_holder_text(holder)} "
                                  f"on {self.root}", stacklevel=3)
                path.unlink(missing_ok=True)  # stale: its process is gone (or the user said so)
                continue
            except OSError as exc:
                raise _disk_error(path, exc) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        try:
            self.remove_stale_temporaries()
            yield
        finally:
            if _read_lock(path) == me:
                path.unlink(missing_ok=True)


#: ``1`` takes over a lock held by a sweep on another host, which this machine cannot check: set it
#: only when that sweep is gone (its machine died, its job was killed)
BREAK_LOCK_ENV = "ROBUSTBENCH_LTA_BREAK_LOCK"
#: how the "folder is locked" message tells the user to break a lock
BREAK_LOCK_HINT = f"re-run with --break-lock (or {BREAK_LOCK_ENV}=1 in the environment)"
#: the names tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") gives (8 characters of its alphabet)
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def break_lock(out_dir: str | Path) -> dict[str, Any] | None:
    """Remove the lock of the results folder ``out_dir`` left by a sweep that is gone; returns what the
    lock said (None when there was none). A holder still running on this machine is refused."""
    path = ResultsLayout(Path(out_dir)).lock
    if not path.exists():
        return None
    holder = _read_lock(path) or {}
    if holder and _on_this_host(holder) and _alive(holder):
        raise UserError(f"{_holder_text(holder)} still runs on this machine and writes into {out_dir}: "
                        "stop it first, or use another --out")
    path.unlink(missing_ok=True)
    return holder


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _on_this_host(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname()


def _holder_text(holder: dict[str, Any]) -> str:
    since = f", started {holder['started']}" if holder.get("started") else ""
    return f"the sweep pid {holder.get('pid')} on {holder.get('host')}{since}"


def _locked_message(holder: dict[str, Any], path: Path, root: Path) -> str:
    if _on_this_host(holder):
        return f"another sweep (pid {holder['pid']} on this machine) is writing into {root}: wait for it, " \
               "or use another --out"
    return (f"{_holder_text(holder)} holds the lock {path}, and this machine cannot tell whether it still "
            f"runs: wait for it; if it is gone (its machine died or its job was killed), {BREAK_LOCK_HINT} "
            "to take the lock over (finished units are kept); or use another --out")


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    if not _on_this_host(holder):
        return True  # cannot tell for another machine: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, KeyError):
        return True
    return True
