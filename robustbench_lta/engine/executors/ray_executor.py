"""Scale a sweep out on Ray: one task per model, all writing cells into the shared results folder.

Needs ``pip install 'robustbench-lta[ray]'``. With no cluster address in ``RAY_ADDRESS`` a local
Ray instance is started. The results folder must be on storage every worker can reach (a shared
filesystem on a cluster). After the tasks finish, one local pass assembles the tables from the
stored cells (recomputing nothing), exactly as a resumed local sweep does.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...config import SweepConfig
from ...errors import UserError


def _run_one_model(cfg_json: dict[str, Any], model_index: int) -> int:
    from ..sweep import run_sweep_config

    cfg = SweepConfig.model_validate(cfg_json)
    cfg.models = [cfg.models[model_index]]
    run_sweep_config(cfg, progress=False)
    return model_index


def run_on_ray(cfg: SweepConfig, progress: bool = True) -> pd.DataFrame:
    try:
        import ray
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'robustbench-lta[ray]' "
                        "(or use --executor local)") from None
    from ..sweep import run_sweep_config

    if cfg.out is None:
        raise UserError("executor 'ray' needs an explicit results folder on shared storage: pass --out DIR")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    try:
        task = ray.remote(_run_one_model)
        cfg_json = cfg.model_dump(mode="json")
        ray.get([task.remote(cfg_json, i) for i in range(len(cfg.models))])
    finally:
        if started_here:
            ray.shutdown()
    return run_sweep_config(cfg, progress=progress)
