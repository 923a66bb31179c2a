"""Where a sweep's units run: in this process (``local``) or spread over a Ray cluster (``ray``).

Both run the same pure unit function and write the same unit files; only the driver assembles the
tables, so the output does not depend on the executor.
"""

from __future__ import annotations

import pandas as pd

from ...config import SweepConfig


def run_with_executor(cfg: SweepConfig, progress: bool = True) -> pd.DataFrame:
    from ..sweep import run_sweep_config

    return run_sweep_config(cfg, progress=progress)
