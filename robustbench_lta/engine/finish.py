"""Assembly: unit files -> the results tables, streamed one model at a time.

Memory is bounded by one model's per-sample rows, never the whole study: ``samples.parquet`` and
``attention.parquet`` are appended to with a pyarrow ``ParquetWriter`` model by model, and each
model's summary rows, worst case and table checks are computed from that model's rows only.
pyarrow rather than DuckDB: it is already a dependency (pandas' parquet engine), writes the same
files the rest of the tool reads, and per-model batches need no query planner.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..results import (
    ATTENTION_COLUMNS,
    COLUMN_DEFAULTS,
    CSV_TABLES,
    SAMPLE_COLUMNS,
    SANITY_COLUMNS,
    STATUS_FAILED,
    STATUS_INVALID,
    STATUS_NOT_APPLICABLE,
    STATUS_OK,
    STATUS_PRECEDENCE,
    SUMMARY_COLUMNS,
    cell_summary_rows,
    empty_frame,
    worst_case_rows,
)
from ..utils import apply_umask
from .explorer import assemble_cell as assemble_explorer
from .plan import Cell
from .sanity import AttackTraits, table_checks
from .store import ResultStore, _disk_error

SAMPLE_SCHEMA = pa.schema([("model", pa.string()), ("attack", pa.string()), ("eps", pa.float64()),
                           ("index", pa.int64()), ("label", pa.int64()), ("clean_pred", pa.int64()),
                           ("adv_pred", pa.int64()), ("norm", pa.float64()), ("attacked", pa.bool_()),
                           ("broken", pa.bool_()), ("skipped_by", pa.string())])
ATTENTION_SCHEMA = pa.schema([("model", pa.string()), ("attack", pa.string()), ("eps", pa.float64()),
                              ("index", pa.int64()), ("level", pa.int64()), ("js_divergence", pa.float32()),
                              ("box_mass_clean", pa.float32()), ("box_mass_adv", pa.float32())])


@dataclass
class CellUnits:
    """A cell and the units (start, stop, meta) that cover its samples, in sample order."""

    cell: Cell
    units: list[tuple[int, int, dict[str, Any]]]


def combine_eps_status(units: Sequence[tuple[int, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per eps: invalid if any shard was, else failed, else not-applicable, else ok; work and time summed."""
    out: list[dict[str, Any]] = []
    for k, first in enumerate(units[0][2]["eps_status"]):
        parts = [u[2]["eps_status"][k] for u in units]
        status, message = STATUS_OK, ""
        for wanted in STATUS_PRECEDENCE:
            bad = [p for p in parts if p["status"] == wanted]
            if bad:
                status, message = wanted, bad[0]["message"]
                break
        out.append({"eps": float(first["eps"]), "status": status, "message": message,
                    "seconds": float(sum(p["seconds"] for p in parts)),
                    "forward": int(sum(p["forward"] for p in parts)),
                    "backward": int(sum(p["backward"] for p in parts))})
    return out


def _read_cell(store: ResultStore, cu: CellUnits, kind: str) -> pd.DataFrame | None:
    frames = []
    for start, stop, _meta in cu.units:
        table, att = store.unit_tables(cu.cell.id, f"{start:09d}-{stop:09d}")
        path = table if kind == "samples" else att
        if path.is_file():
            frames.append(pd.read_parquet(path))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if kind == "samples" and "skipped_by" not in df.columns:  # unit files written before the cascade
        df["skipped_by"] = COLUMN_DEFAULTS["skipped_by"]
    keys = ["eps"] if kind == "samples" else ["eps", "level"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


class _Appender:
    """A parquet file written model by model into a temporary name, renamed in place at the end."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = path, schema
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def add(self, df: pd.DataFrame) -> None:
        if len(df):
            self.writer.write_table(pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))

    def commit(self) -> None:
        self.writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        apply_umask(self.tmp)  # mkstemp makes 0600: results are shared files like any other
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def assemble(store: ResultStore, models: Sequence[str], cells: Sequence[CellUnits], dataset: str,
             traits: dict[str, AttackTraits], model_sanity: dict[str, list[dict[str, Any]]]
             ) -> pd.DataFrame:
    """Write summary, samples, sanity and attention tables; return the summary."""
    try:
        samples_out = _Appender(store.layout.table("samples"), SAMPLE_SCHEMA)
        attention_out = _Appender(store.layout.table("attention"), ATTENTION_SCHEMA)
    except OSError as exc:
        raise _disk_error(store.root, exc) from None
    summary_parts: list[pd.DataFrame] = []
    sanity_rows: list[dict[str, Any]] = []
    try:
        for model in models:
            rows, samples_m = [], []
            for cu in (c for c in cells if c.cell.model == model):
                status = combine_eps_status(cu.units)
                df = _read_cell(store, cu, "samples")
                if df is None:
                    df = empty_frame(SAMPLE_COLUMNS)
                first_eps = df[df["eps"] == df["eps"].iloc[0]] if len(df) else df
                ok_eps = [s["eps"] for s in status if s["status"] == STATUS_OK]
                ok_rows = df[df["eps"].isin(ok_eps)]
                plan = cu.cell.attack
                rows += cell_summary_rows(
                    ok_rows, model=model, dataset=dataset, attack=plan.label, norm=plan.norm,
                    label=first_eps["label"].to_numpy(dtype=np.int64),
                    clean_pred=first_eps["clean_pred"].to_numpy(dtype=np.int64), eps_status=status)
                samples_m.append(ok_rows)
                samples_out.add(ok_rows)
                assemble_explorer(store.layout, cu.cell.id, model, plan.label, cu.cell.key, cu.units)
                att = _read_cell(store, cu, "attention")
                if att is not None and all(s["status"] == STATUS_OK for s in status):
                    attention_out.add(att[ATTENTION_COLUMNS])
            summary_m = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
            samples_df = pd.concat(samples_m, ignore_index=True) if samples_m else empty_frame(SAMPLE_COLUMNS)
            worst = worst_case_rows(summary_m, samples_df)
            if worst:
                summary_m = pd.concat([summary_m, pd.DataFrame(worst, columns=SUMMARY_COLUMNS)],
                                      ignore_index=True)
            summary_parts.append(summary_m)
            sanity_rows += model_sanity.get(model, []) + table_checks(summary_m, samples_df, traits)
            del samples_df, samples_m
        samples_out.commit()
        attention_out.commit()
    except OSError as exc:
        samples_out.abort()
        attention_out.abort()
        raise _disk_error(store.root, exc) from None
    except BaseException:
        samples_out.abort()
        attention_out.abort()
        raise
    summary = pd.concat(summary_parts, ignore_index=True) if summary_parts else \
        pd.DataFrame(columns=SUMMARY_COLUMNS)
    summary = summary.astype({"forward": "int64", "backward": "int64", "n": "int64"})
    sanity = pd.DataFrame(sanity_rows, columns=SANITY_COLUMNS)
    store.write_table("summary", summary, csv_too="summary" in CSV_TABLES)
    store.write_table("sanity", sanity, csv_too="sanity" in CSV_TABLES)
    return summary


def not_ok_counts(summary: pd.DataFrame) -> dict[str, int]:
    per = summary[summary["attack"] != "worst-case"]
    return {"failed": int((per["status"] == STATUS_FAILED).sum()),
            "invalid": int((per["status"] == STATUS_INVALID).sum()),
            "not_applicable": int((per["status"] == STATUS_NOT_APPLICABLE).sum())}


def check_compatible(previous: dict[str, Any] | None, current: dict[str, Any], replace: bool) -> None:
    """A different sweep into a finished folder would replace its tables: refuse unless it only adds.

    Adding attacks, eps or models to the same data (resume folds them into the worst case) is fine;
    dropping any, or other data, replaces what the folder shows, so it needs ``--replace``.
    """
    if replace or not previous or previous.get("status") != "finished":
        return
    problems = []
    if previous.get("dataset", {}).get("fingerprint") != current["dataset"]["fingerprint"]:
        problems.append("other data (dataset or samples differ)")
    for what in ("models", "attacks"):
        gone = sorted(set(previous.get(what, {})) - set(current[what]))
        if gone:
            problems.append(f"no {what} {', '.join(gone)}")
    old_eps = {round(float(e), 9) for e in previous.get("eps", [])}
    new_eps = {round(float(e), 9) for e in current["eps"]}
    if old_eps - new_eps:
        problems.append("fewer eps (" + ", ".join(f"{e * 255:.3g}/255" for e in sorted(old_eps - new_eps)
                                                 if math.isfinite(e)) + ")")
    if previous.get("config", {}).get("accounting") != current["config"].get("accounting"):
        problems.append("another accounting")
    if problems:
        raise UserError(f"{current['out']} holds a finished sweep that this one would replace ("
                        + "; ".join(problems) + "): use another --out, include everything it had "
                        "(adding models, attacks or eps is fine), or pass --replace")
