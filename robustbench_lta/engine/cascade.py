"""Cascade accounting: what the earlier attacks of a model already broke, per budget of a later one.

Under ``accounting: cascade`` a cell's ``upstream`` holds the cheaper attacks of the same model and
norm (engine/plan.py). Before a unit runs, the upstream cells' stored units for its samples are read:
a clean-correct sample that an upstream attack broke at a budget ``e`` is broken, with that attack's
adversarial example, at every budget ``>= e`` of this cell (the example lies in every larger ball),
so this attack does not run on it there. The unit records it as broken, ``attacked`` false, with
``skipped_by`` naming the upstream attack; the worst case over attacks is the same as in the full
mode, while this attack's own row counts what the cascade broke up to it.

Only ``ok`` budgets of upstream units count; a sample whose upstream unit is missing or failed is
simply attacked (never skipped on a guess).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..results import EPS_TOL, STATUS_OK
from .plan import Unit, select_stored
from .store import ResultStore

_COLUMNS = ["eps", "index", "label", "clean_pred", "adv_pred", "norm", "broken"]


@dataclass
class UpstreamBreaks:
    """Per budget ``k`` of the cell's chain and sample ``j`` of the unit (relative position)."""

    has: np.ndarray   # (E, m) bool: an earlier attack broke it at a budget <= chain[k]
    pred: np.ndarray  # (E, m) int64: that adversarial example's prediction
    norm: np.ndarray  # (E, m) float64: its perturbation norm
    by: np.ndarray    # (E, m) object: the earlier attack's label ("" where none)

    @classmethod
    def empty(cls, n_eps: int, m: int) -> UpstreamBreaks:
        return cls(np.zeros((n_eps, m), dtype=bool), np.full((n_eps, m), -1, dtype=np.int64),
                   np.zeros((n_eps, m), dtype=np.float64), np.full((n_eps, m), "", dtype=object))


def upstream_breaks(store: ResultStore, unit: Unit, index: np.ndarray) -> UpstreamBreaks | None:
    """What the upstream cells broke among the unit's samples (``index``: their dataset indices)."""
    cell = unit.cell
    if not cell.upstream:
        return None
    chain = np.asarray(cell.attack.chain, dtype=np.float64)
    out = UpstreamBreaks.empty(len(chain), len(index))
    where = pd.Index(np.asarray(index, dtype=np.int64))
    for up in cell.upstream:  # cascade order: the first attack that broke a sample is named
        found = store.stored_units(up.id, up.key)
        keep = set(select_stored([(s, e) for s, e, _ in found]))
        for s, e, meta in found:
            if (s, e) not in keep or e <= unit.start or s >= unit.stop:
                continue
            ok_eps = [float(st["eps"]) for st in meta["eps_status"] if st["status"] == STATUS_OK]
            table, _ = store.unit_tables(up.id, f"{s:09d}-{e:09d}")
            df = pd.read_parquet(table)
            hit = df["broken"].to_numpy(bool) & (df["clean_pred"] == df["label"]).to_numpy()
            hit &= df["eps"].isin(ok_eps).to_numpy()
            if "skipped_by" in df.columns:  # its own skips repeat an earlier upstream's breaks
                hit &= (df["skipped_by"].astype(str) == "").to_numpy()
            df = df.loc[hit, _COLUMNS].sort_values("eps", kind="stable")
            rel = where.get_indexer(df["index"].to_numpy(dtype=np.int64))
            df, rel = df[rel >= 0], rel[rel >= 0]
            for k, eps in enumerate(chain):
                sel = (df["eps"].to_numpy() <= eps + EPS_TOL) & ~out.has[k, rel]
                # the smallest upstream budget that broke each sample (rows are sorted by eps)
                r, first = np.unique(rel[sel], return_index=True)
                rows = df[sel].iloc[first]
                out.has[k, r] = True
                out.pred[k, r] = rows["adv_pred"].to_numpy(dtype=np.int64)
                out.norm[k, r] = rows["norm"].to_numpy(dtype=np.float64)
                out.by[k, r] = up.attack.label
    return out
