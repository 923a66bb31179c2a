"""robustbench-lta: how robust are attention-augmented CNNs, really, compared with their baselines?

The public API is re-exported here lazily (so ``import robustbench_lta`` stays fast and the CLI
starts quickly)::

    from robustbench_lta import create_model, list_models, load_model, run_sweep
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "UserError": ".errors",
    "create_model": ".models.registry",
    "list_models": ".models.registry",
    "register_model": ".models.registry",
    "model_info": ".models.registry",
    "load_dataset": ".data.registry",
    "list_datasets": ".data.registry",
    "register_dataset": ".data.registry",
    "load_model": ".training.checkpoint",
    "save_checkpoint": ".training.checkpoint",
    "train": ".training.trainer",
    "Attack": ".plugins.base",
    "ThreatModel": ".plugins.base",
    "AttackKind": ".plugins.base",
    "register_attack": ".plugins.registry",
    "list_attacks": ".plugins.registry",
    "get_attack": ".plugins.registry",
    "run_sweep": ".engine.api",
    "build_report": ".reporting.pdf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'robustbench_lta' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
