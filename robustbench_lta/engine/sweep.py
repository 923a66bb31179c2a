"""The sweep driver: resolve, plan, hand units to an executor, assemble, write the manifest.

The path of one sweep (docs/architecture.md):

1. ``SweepConfig`` (validated once) or the Python API's arguments.
2. Resolve (before anything is written): models -> :class:`LoadedModel` (content fingerprints),
   data -> :class:`SampleSource`, attacks -> :class:`AttackPlan` (parameters validated).
3. Plan: cells (model x attack) keyed by content; units = cells x shards not yet in the folder.
4. An executor (in this process, or Ray) runs every pending unit (:func:`run_attack_unit`) and
   per-model pass; workers write unit files atomically.
5. The driver alone assembles the tables, one model at a time, then marks the manifest finished.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import SweepConfig, SweepModelSpec
from ..errors import UserError
from ..plugins.base import Attack
from ..results import FORMAT, SANITY_COLUMNS, TABLES
from ..utils import device_description, git_commit, package_versions, resolve_device
from .finish import CellUnits, assemble, check_compatible, not_ok_counts
from .inputs import SampleSource, resolve_source
from .model_pass import ModelPassSettings, figure_attack
from .models import LoadedModel, ModuleState, load_sweep_model
from .plan import AttackPlan, Cell, Unit, build_attack_plans, canonical, plan_cells, plan_units, select_stored
from .runtime import amp_key
from .sanity import AttackTraits
from .store import ResultStore
from .unit import UnitSettings


@dataclass
class Sweep:
    """A resolved sweep: everything validated, nothing written yet."""

    cfg: SweepConfig
    models: list[LoadedModel]
    source: SampleSource
    attacks: list[AttackPlan]
    cells: list[Cell]
    device: torch.device
    out: Path
    user_modules: list[tuple[nn.Module, ModuleState]] = field(default_factory=list)
    gmacs: dict[str, float | None] = field(default_factory=dict)  # per model, at the data's image size
    # the code that runs this sweep: asked of git once (the manifest is written three times a sweep)
    commit: str | None = field(default_factory=git_commit)

    @property
    def unit_settings(self) -> UnitSettings:
        cfg = self.cfg
        return UnitSettings(batch_size=cfg.batch_size, seed=cfg.seed, accounting=cfg.accounting,
                            explorer_samples=cfg.explorer_samples)

    @property
    def model_pass_settings(self) -> ModelPassSettings:
        return ModelPassSettings(batch_size=self.cfg.batch_size, seed=self.cfg.seed,
                                 sanity_samples=self.cfg.sanity_samples,
                                 attention_samples=self.cfg.attention_samples,
                                 figure_attack=figure_attack(self.attacks))

    def model_pass_key(self, lm: LoadedModel) -> str:
        fig = self.model_pass_settings.figure_attack
        payload = {"model": lm.fingerprint, "data": self.source.fingerprint, "seed": self.cfg.seed,
                   "sanity": self.cfg.sanity_samples, "attention": self.cfg.attention_samples if
                   lm.has_attention else 0, "figure": [fig.name, fig.params, list(fig.eps)] if fig else None,
                   "engine": 2}
        amp = amp_key(self.device, self.cfg.amp)
        if amp != "off":  # the amp-parity row; float32 sweeps keep their earlier keys
            payload["amp"] = amp
        return hashlib.sha256(canonical(payload).encode()).hexdigest()

    def traits(self) -> dict[str, AttackTraits]:
        return {a.label: AttackTraits(kind=a.kind, iterative=a.iterative, bounded=a.bounded, norm=a.norm)
                for a in self.attacks}


# ------------------------------------------------------------------------------------ resolving
def resolve(cfg: SweepConfig, *, models: Mapping[str, Any] | None = None, data: Any = None,
            attack_instances: Mapping[str, Attack] | None = None, classes: Sequence[str] | None = None
            ) -> Sweep:
    """Validate everything a sweep needs before anything is written."""
    device = resolve_device(cfg.device)
    attacks = build_attack_plans(cfg, attack_instances)
    loaded: list[LoadedModel] = []
    user_modules: list[tuple[nn.Module, ModuleState]] = []
    entries = list(models.items()) if models is not None else [(s.name, s) for s in cfg.models]
    for label, m in entries:
        if isinstance(m, nn.Module):
            user_modules.append((m, ModuleState.capture(m)))
            spec: SweepModelSpec | nn.Module = m
        else:
            spec = m if isinstance(m, SweepModelSpec) else SweepModelSpec(name=label, source=str(m))
        loaded.append(load_sweep_model(spec, label, cfg.seed))
    labels = [lm.label for lm in loaded]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserError(f"two models share the label {dup[0]!r}: give them distinct names (name: ...)")
    try:
        source = resolve_source(cfg, data, loaded, classes)
    except BaseException:
        for module, state in user_modules:
            state.restore(module)
        raise
    cells = plan_cells([(lm.label, lm.fingerprint) for lm in loaded], source.fingerprint, attacks, cfg.seed,
                       cfg.accounting, amp_key(device, cfg.amp))
    gmacs = {lm.label: _gmacs(lm, source) for lm in loaded}
    out = Path(cfg.out) if cfg.out else None
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="robustbench-lta-"))
    return Sweep(cfg, loaded, source, attacks, cells, device, out, user_modules, gmacs)


def _gmacs(lm: LoadedModel, source: SampleSource) -> float | None:
    """Compute per image at the data's size (the report warns when compared models differ > 2x)."""
    from ..models.compute import model_gmacs

    try:
        _pos, x, _y = next(source.batches(np.arange(1), 1, torch.device("cpu")))
        return round(float(model_gmacs(lm.module, tuple(x.shape[1:]))), 6)
    except Exception:  # a model the FLOP counter cannot trace: shown as unknown, never fatal
        return None


# ------------------------------------------------------------------------------------ running
@dataclass
class Pending:
    """What the executor must run: attack units and per-model passes (model label -> key)."""

    units: list[Unit]
    model_passes: dict[str, str]
    stored: dict[str, list[tuple[int, int, dict[str, Any]]]]  # cell id -> stored units


def pending_work(sweep: Sweep, store: ResultStore) -> Pending:
    units: list[Unit] = []
    stored: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for cell in sweep.cells:
        found = store.stored_units(cell.id, cell.key, retry_invalid=sweep.cfg.retry_invalid)
        keep = select_stored([(s, e) for s, e, _ in found])
        stored[cell.id] = [u for u in found if (u[0], u[1]) in keep]
        units += plan_units(cell, sweep.source.n, sweep.cfg.shard_size, keep)
    # shard-major per model: consecutive units of a model share its shard's data; under cascade
    # accounting cell-major, so every upstream unit is stored before a unit that reads it
    order = {lm.label: i for i, lm in enumerate(sweep.models)}
    if sweep.cfg.accounting == "cascade":
        rank = {cell.id: i for i, cell in enumerate(sweep.cells)}
        units.sort(key=lambda u: (order[u.cell.model], rank[u.cell.id], u.start))
    else:
        units.sort(key=lambda u: (order[u.cell.model], u.start))
    passes = {}
    for lm in sweep.models:
        key = sweep.model_pass_key(lm)
        figure_due = lm.has_attention and sweep.cfg.attention_samples > 0 and \
            sweep.model_pass_settings.figure_attack is not None and store.read_attention_key(lm.label) != key
        if figure_due or not store.model_pass_path(lm.label, key).is_file():
            passes[lm.label] = key
    return Pending(units, passes, stored)


def _manifest(sweep: Sweep, started: str, status: str, summary: pd.DataFrame | None = None,
              counts: dict[str, int] | None = None, tables: dict[str, str] | None = None) -> dict[str, Any]:
    cfg = sweep.cfg
    return {
        "format": FORMAT,
        "status": status,
        "out": str(sweep.out),
        "config": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "versions": package_versions(),
        "git_commit": sweep.commit,
        "device": device_description(sweep.device),
        "threads": torch.get_num_threads(),
        "started": started,
        "finished": _now() if status == "finished" else None,
        "models": {lm.label: {"source": lm.source, "fingerprint": lm.fingerprint, "sha256": lm.sha256,
                              "card": lm.card, "has_attention": lm.has_attention,
                              "gmacs": sweep.gmacs.get(lm.label)} for lm in sweep.models},
        "dataset": {"name": sweep.source.name, "n": sweep.source.n, "classes": sweep.source.classes,
                    "has_boxes": sweep.source.boxes is not None, "fingerprint": sweep.source.fingerprint},
        "attacks": {a.label: {"name": a.name, "params": a.params, "norm": a.norm, "bounded": a.bounded,
                              "kind": a.kind, "iterative": a.iterative,
                              "source": getattr(a.prototype, "source", ""),
                              "eps": [float(e) for e in a.eps]} for a in sweep.attacks},
        "eps": [float(e) for e in cfg.eps_unit()],
        "counts": counts,
        "tables": tables,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(sweep: Sweep, progress: bool = True) -> pd.DataFrame:
    """Run a resolved sweep into its folder with its executor; returns the summary table."""
    store = ResultStore(sweep.out)
    started = _now()
    with store.locked():
        check_compatible(store.read_manifest(), _manifest(sweep, started, "running"), sweep.cfg.replace)
        store.write_manifest(_manifest(sweep, started, "running"))
        pending = pending_work(sweep, store)
        if sweep.cfg.executor == "ray":
            from .executors.ray_executor import run_units_on_ray

            done = run_units_on_ray(sweep, store, pending, progress=progress)
        else:
            from .executors.local import run_units_locally

            done = run_units_locally(sweep, store, pending, progress=progress)
        cells = []
        for cell in sweep.cells:
            units = sorted(pending.stored[cell.id] + done.get(cell.id, []), key=lambda u: u[0])
            cells.append(CellUnits(cell, units))
        model_sanity = {lm.label: _read_model_sanity(store, lm.label, sweep.model_pass_key(lm))
                        for lm in sweep.models}
        summary = assemble(store, [lm.label for lm in sweep.models], cells, sweep.source.name,
                           sweep.traits(), model_sanity)
        _write_published(store, summary, sweep.models)
        n_run = sum(len(v) for v in done.values())
        counts = {"units_run": n_run, "units_reused": sum(len(v) for v in pending.stored.values()),
                  "cells": len(sweep.cells), **{f"cells_{k}": v for k, v in not_ok_counts(summary).items()}}
        store.write_manifest(_manifest(sweep, started, "finished", summary, counts,
                                       store.table_digests(TABLES)))
    summary.attrs["out_dir"] = str(store.root)
    summary.attrs["counts"] = counts
    return summary


def _write_published(store: ResultStore, summary: pd.DataFrame, models: list[LoadedModel]) -> None:
    """Published vs measured beside the summary, for models whose card carries published numbers."""
    from ..sources.published import published_comparison

    published = published_comparison(summary, {lm.label: lm.card for lm in models})
    if len(published):
        store.write_table("published", published, csv_too=True)
    else:  # no stale comparison from an earlier sweep into this folder
        for suffix in (".csv", ".parquet"):
            store.layout.table("published", suffix).unlink(missing_ok=True)


def _read_model_sanity(store: ResultStore, label: str, key: str) -> list[dict[str, Any]]:
    path = store.model_pass_path(label, key)
    if not path.is_file():
        return []
    return pd.read_parquet(path)[SANITY_COLUMNS].to_dict("records")


def run_sweep_config(cfg: SweepConfig, *, progress: bool = True, models: Mapping[str, Any] | None = None,
                     data: Any = None, attack_instances: Mapping[str, Attack] | None = None,
                     classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Run a validated sweep config; returns the summary table (also written to ``cfg.out``).

    A caller's ``nn.Module`` is handed back as it was found (mode of every submodule,
    ``requires_grad``, memory format, device), also when the sweep raises or is interrupted.
    """
    import torch

    from ..config import apply_threads

    # an explicit `threads` is applied; otherwise the caller's torch setting is kept and recorded
    cfg.threads = apply_threads(cfg.threads) if cfg.threads else torch.get_num_threads()
    sweep = resolve(cfg, models=models, data=data, attack_instances=attack_instances, classes=classes)
    try:
        return execute(sweep, progress=progress)
    finally:
        for module, state in sweep.user_modules:
            state.restore(module)


__all__ = ["run_sweep_config", "resolve", "execute", "Sweep", "LoadedModel", "SampleSource"]
