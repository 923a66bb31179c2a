"""The Python API of a sweep: :func:`run_sweep`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from ..config import SweepConfig, parse_attack_string, validate
from ..errors import UserError
from ..plugins.base import Attack
from .sweep import run_sweep_config


def run_sweep(models: Mapping[str, str | nn.Module] | Sequence[str], attacks: Sequence[str | Attack |
              Mapping[str, Any]], eps: Sequence[float], data: Any = None, *, n: int = 1000,
              batch_size: int = 256, device: str | None = None, seed: int = 0,
              accounting: str = "worst-case", out: str | Path | None = None,
              plugins: Sequence[str | Path] = (), attention_samples: int = 8, sanity_samples: int = 64,
              classes: Sequence[str] | None = None, progress: bool = True, **options: Any) -> pd.DataFrame:
    """Run models x attacks x eps and return the summary table (one row per model x attack x eps).

    Args:
        models: name -> checkpoint path, registry name or any nn.Module mapping [0,1] images to
            logits (a list of paths/names is also accepted; labels are then derived). A seed-family
            folder (``train --seeds``) stands for each of its seed runs, labelled ``name@seed<S>``.
            A module is handed back as it was found (mode, ``requires_grad``, memory format,
            device), also when the sweep raises.
        attacks: attack names (``"fgsm"``, ``"ta:PGD"``, ``"pgd-linf:steps=20"`` as on the CLI), dicts like
            ``{"name": "pgd-linf", "params": {"steps": 20}, "label": "pgd20"}``, or Attack instances.
        eps: budgets on the [0,1] scale (e.g. ``[0, 2/255, 8/255]``).
        data: a Dataset, a DataLoader, an ``(x, y)`` pair of tensors in any layout, or a dataset
            registry name; default: the dataset in the first checkpoint's card. Datasets are read
            batch by batch, never collected into one tensor.
        classes: class names for an ``(x, y)`` pair or a dataset without ``classes`` (default: one
            per output of the first model; never guessed from the labels present).
        out: results folder (default: a new temporary folder, in ``summary.attrs["out_dir"]``).
        options: other :class:`~robustbench_lta.config.SweepConfig` fields: ``amp="bf16"``,
            ``compile=True``, ``channels_last=False``, ``shard_size=512``, ``retry_invalid=True``.
            This function always runs in-process; for Ray use ``robustbench-lta sweep --executor ray``.
    """
    if options.get("executor", "local") != "local":
        raise UserError("run_sweep runs in-process: for Ray use `robustbench-lta sweep --executor ray`")
    if not isinstance(models, Mapping):
        models = {str(Path(m).stem) if isinstance(m, str) else type(m).__name__: m for m in models}
    specs, instances = [], {}
    for a in attacks:
        if isinstance(a, Attack):
            specs.append({"name": a.name or type(a).__name__, "params": {}})
            instances[a.name or type(a).__name__] = a
        elif isinstance(a, Mapping):
            specs.append(dict(a))
        else:
            specs.append(parse_attack_string(str(a)))
    data_spec = None
    if isinstance(data, str):
        data_spec, data = {"name": data}, None
    from ..training.family import expand_model_specs

    raw = {
        # a family folder (runs/<model>/seed<S>) becomes one model per seed, labelled <name>@seed<S>
        "models": expand_model_specs([{"name": k, "source": v if isinstance(v, str) else f"module:{k}"}
                                      for k, v in models.items()]),
        # a bool is passed on as is for the config to refuse (float(True) would be a budget of 1)
        "attacks": specs, "eps": [e if isinstance(e, bool) else float(e) for e in eps], "eps_scale": 1.0,
        "n": n, "data": data_spec,
        "batch_size": batch_size, "device": device or "auto", "seed": seed, "accounting": accounting,
        "plugins": [str(p) for p in plugins], "attention_samples": attention_samples,
        "sanity_samples": sanity_samples, "out": str(out) if out else None, **options,
    }
    cfg = validate(SweepConfig, raw, "run_sweep arguments")
    for spec_obj in cfg.attacks:  # instances keep their own parameters
        if (spec_obj.label or spec_obj.name) in instances:
            spec_obj.params = dict(instances[spec_obj.label or spec_obj.name].params)
    # modules by their label; checkpoint specs (family folders already expanded) as validated
    entries = {spec.name: models[spec.name] if isinstance(models.get(spec.name), nn.Module) else spec
               for spec in cfg.models}
    return run_sweep_config(cfg, progress=progress, models=entries, data=data,
                            attack_instances=instances or None, classes=classes)
