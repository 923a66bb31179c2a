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
import socket
from collections.abc import Iterator
from contextlib import contextmanager
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
                   attention: pd.DataFrame | None) -> None:
        table, att, meta_path = self._unit_paths(cell_id, unit_id)
        try:
            atomic_write_dataframe(table, samples)
            if attention is not None and len(attention):
                atomic_write_dataframe(att, attention)
            else:
                att.unlink(missing_ok=True)
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
        np.savez_compressed(buf, **arrays)
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

    # -- one sweep at a time ------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Refuse a second sweep into the same folder while one runs (a stale lock is taken over)."""
        path = self.layout.lock
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder):
                    raise UserError(f"another sweep (pid {holder['pid']} on {holder['host']}) is writing "
                                    f"into {self.root}: wait for it, or use another --out") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as exc:
                raise _disk_error(path, exc) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        try:
            yield
        finally:
            if _read_lock(path) == me:
                path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell for another machine: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True
