"""The results folder: finished cells written atomically as they complete, tables at the end.

Layout (see docs/architecture.md): ``cells/ID.parquet`` holds a cell's per-sample rows and
``cells/ID.json`` its summary rows and key. The JSON is written last and is the commit marker: a
cell counts as finished only when its JSON exists and carries the expected key, so a ``kill -9``
at any moment leaves either a finished cell or none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..utils import atomic_write_bytes, atomic_write_dataframe, atomic_write_json


class ResultStore:
    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"results path {self.root} exists and is not a folder: choose another --out")
        self.cells = self.root / "cells"
        self.attention_dir = self.root / "attention"
        self.cells.mkdir(parents=True, exist_ok=True)

    # -- cells ----------------------------------------------------------------------------------
    def _paths(self, cell_id: str) -> tuple[Path, Path]:
        return self.cells / f"{cell_id}.parquet", self.cells / f"{cell_id}.json"

    def load_cell(self, cell_id: str, key: str) -> tuple[dict[str, Any], pd.DataFrame] | None:
        """The stored cell if it finished under the same key, else None (it will be recomputed)."""
        table, meta_path = self._paths(cell_id)
        if not meta_path.is_file() or not table.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            samples = pd.read_parquet(table)
        except (OSError, ValueError):
            return None  # unreadable leftovers are recomputed, never trusted
        return meta, samples

    def write_cell(self, cell_id: str, meta: dict[str, Any], samples: pd.DataFrame,
                   attention: pd.DataFrame | None = None) -> None:
        table, meta_path = self._paths(cell_id)
        atomic_write_dataframe(table, samples)
        if attention is not None and len(attention):
            atomic_write_dataframe(self.cells / f"{cell_id}.attention.parquet", attention)
        atomic_write_json(meta_path, meta)

    def load_cell_attention(self, cell_id: str) -> pd.DataFrame | None:
        path = self.cells / f"{cell_id}.attention.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    # -- attention figure data ------------------------------------------------------------------
    def attention_path(self, model: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in model)
        return self.attention_dir / f"{safe}.npz"

    def write_attention_arrays(self, model: str, arrays: dict[str, np.ndarray]) -> Path:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        path = self.attention_path(model)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def read_attention_key(self, model: str) -> str | None:
        path = self.attention_path(model)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return str(data["key"]) if "key" in data else None
        except (OSError, ValueError):
            return None

    # -- final tables -----------------------------------------------------------------------------
    def write_tables(self, tables: dict[str, pd.DataFrame], csv_too: tuple[str, ...] = ()) -> None:
        for name, df in tables.items():
            atomic_write_dataframe(self.root / f"{name}.parquet", df)
            if name in csv_too:
                atomic_write_dataframe(self.root / f"{name}.csv", df)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.root / "manifest.json", manifest)
