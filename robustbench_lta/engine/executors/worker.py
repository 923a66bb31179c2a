"""What one process needs to run units: a prepared model (cached) and the samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...results import SANITY_COLUMNS
from ..cascade import upstream_breaks
from ..inputs import SampleSource, shard_view
from ..model_pass import ModelPassSettings, run_model_pass
from ..models import LoadedModel
from ..plan import Unit
from ..runtime import PreparedModel, prepare_model
from ..store import ResultStore
from ..unit import UnitSettings, run_attack_unit, unit_meta


class Worker:
    """Runs units of one sweep in this process; keeps the last prepared model (loaded once)."""

    def __init__(self, source: SampleSource, store: ResultStore, device: Any, *, amp: str,
                 channels_last: bool, compile_model: bool) -> None:
        self.source, self.store, self.device = source, store, device
        self.amp, self.channels_last, self.compile_model = amp, channels_last, compile_model
        self._prepared: PreparedModel | None = None
        # clean-correct flags per model label and shard start, from the units this worker ran: the
        # model pass picks its samples from them instead of a second clean forward
        self._clean: dict[str, dict[int, np.ndarray]] = {}

    def prepared(self, lm: LoadedModel) -> PreparedModel:
        if self._prepared is None or self._prepared.loaded is not lm:
            _pos, x, _y = next(self.source.batches(np.arange(1), 1, self.device))
            self._prepared = prepare_model(lm, self.device, amp=self.amp, channels_last=self.channels_last,
                                           compile_model=self.compile_model, probe_shape=tuple(x.shape))
        return self._prepared

    def run_unit(self, lm: LoadedModel, unit: Unit, settings: UnitSettings,
                 on_batch: Any = None) -> tuple[int, int, dict[str, Any]]:
        index = self.source.index[unit.start:unit.stop]
        upstream = upstream_breaks(self.store, unit, index) if unit.cell.upstream else None
        pm = self.prepared(lm)
        # a streamed shard is decoded once for the clean pass and every budget, not once per budget
        source = shard_view(self.source, unit.start, unit.stop, settings.batch_size)
        result = run_attack_unit(pm, source, unit, settings, on_batch, upstream)
        if result.clean_correct is not None:
            self._clean.setdefault(lm.label, {})[unit.start] = result.clean_correct
        meta = unit_meta(unit, result.eps_status)
        self.store.write_unit(unit.cell.id, unit.id, meta, result.samples, result.attention, result.explorer)
        return unit.start, unit.stop, meta

    def _known_correct(self, label: str) -> np.ndarray | None:
        """Clean-correct flags of the longest run of samples from position 0 this worker has seen."""
        shards = self._clean.get(label, {})
        parts, at = [], 0
        while at in shards and len(shards[at]):
            parts.append(shards[at])
            at += len(shards[at])
        return np.concatenate(parts) if parts else None

    def run_model_pass(self, lm: LoadedModel, key: str, settings: ModelPassSettings) -> None:
        result = run_model_pass(self.prepared(lm), self.source, settings, self._known_correct(lm.label))
        if result.figure is not None:
            result.figure["key"] = np.array(key)
            self.store.write_attention_arrays(lm.label, result.figure)
        from ...utils import atomic_write_dataframe

        atomic_write_dataframe(self.store.model_pass_path(lm.label, key),
                               pd.DataFrame(result.sanity, columns=SANITY_COLUMNS))
