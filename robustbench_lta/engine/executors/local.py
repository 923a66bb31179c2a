"""Run every pending unit in this process, model by model and shard by shard, with progress."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ..store import ResultStore
from .worker import Worker


def run_units_locally(sweep: Any, store: ResultStore, pending: Any, progress: bool = True
                      ) -> dict[str, list[tuple[int, int, dict[str, Any]]]]:
    cfg = sweep.cfg
    worker = Worker(sweep.source, store, sweep.device, amp=cfg.amp, channels_last=cfg.channels_last,
                    compile_model=cfg.compile)
    by_label = {lm.label: lm for lm in sweep.models}
    done: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    total = len(pending.units) + len(pending.model_passes)
    bar = tqdm(total=total, desc="sweep", unit="unit", disable=not progress)
    try:
        for lm in sweep.models:
            for unit in (u for u in pending.units if u.cell.model == lm.label):
                bar.set_postfix_str(f"{lm.label} | {unit.cell.attack.label} | {unit.start}-{unit.stop}")
                done.setdefault(unit.cell.id, []).append(
                    worker.run_unit(by_label[lm.label], unit, sweep.unit_settings))
                bar.update(1)
            if lm.label in pending.model_passes:
                bar.set_postfix_str(f"{lm.label} | model checks")
                worker.run_model_pass(lm, pending.model_passes[lm.label], sweep.model_pass_settings)
                bar.update(1)
    finally:
        bar.close()
    return done
