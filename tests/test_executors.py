"""The Ray executor writes the same cells and tables as the local one."""

from __future__ import annotations

import pandas as pd
import pytest

from robustbench_lta.config import SweepConfig, validate
from robustbench_lta.engine.executors import run_with_executor


def _cfg(ckpts, out, executor: str) -> SweepConfig:
    return validate(SweepConfig, {
        "models": [{"name": name, "source": str(path)} for name, path in ckpts.items()],
        "attacks": [{"name": "fgsm"}, {"name": "pgd-linf", "params": {"steps": 3}}],
        "eps": [0, 2, 8], "n": 48, "batch_size": 48, "sanity_samples": 16, "attention_samples": 2,
        "executor": executor, "out": str(out),
    })


def test_ray_executor_matches_local(trained_checkpoints, tmp_path):
    pytest.importorskip("ray")
    local = run_with_executor(_cfg(trained_checkpoints, tmp_path / "local", "local"), progress=False)
    on_ray = run_with_executor(_cfg(trained_checkpoints, tmp_path / "ray", "ray"), progress=False)
    drop = ["seconds"]
    pd.testing.assert_frame_equal(on_ray.drop(columns=drop), local.drop(columns=drop))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "local" / "samples.parquet"))
