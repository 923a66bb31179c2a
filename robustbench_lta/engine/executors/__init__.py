"""Where a sweep's cells run: in this process (``local``) or spread over a Ray cluster (``ray``).

Both write the same cells into the same results folder; the final tables are always assembled by
one local pass that reuses every finished cell, so the output does not depend on the executor.
"""

from __future__ import annotations

import pandas as pd

from ...config import SweepConfig


def run_with_executor(cfg: SweepConfig, progress: bool = True) -> pd.DataFrame:
    if cfg.executor == "ray":
        from .ray_executor import run_on_ray

        return run_on_ray(cfg, progress=progress)
    from ..sweep import run_sweep_config

    return run_sweep_config(cfg, progress=progress)
