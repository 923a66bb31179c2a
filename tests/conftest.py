"""Shared fixtures: two small trained checkpoints (a SmallCNN baseline and its attention version).

They are trained once per test session on the embedded cluttered-digits data, at a tiny width, so
every test that needs a real trained model (sweeps, CLI, reports) shares the same few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("RBLTA_TEST_THREADS", "2")))  # 2: the CI machine

TINY = {"width": 0.25}


def _train(root: Path, name: str) -> Path:
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.training.trainer import train

    cfg = validate(TrainConfig, {
        "model": {"name": name, **TINY},
        "data": {"name": "cluttered-digits", "n_train": 3000, "n_test": 300},
        "augment": {"flip": False, "crop_padding": 0},
        "epochs": 4, "batch_size": 32, "lr": 0.02, "lr_step_epochs": 3, "seed": 0,
        "out": str(root / name),
    })
    result = train(cfg, progress=False)
    return Path(result.best_path)


@pytest.fixture(scope="session")
def trained_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # developers may point RBLTA_FIXTURE_CACHE at a folder to train these once across sessions
    # (CI never sets it: every CI run trains them afresh with the code under test)
    cache = os.environ.get("RBLTA_FIXTURE_CACHE")
    if cache and all((Path(cache) / n / "best.safetensors").is_file()
                     for n in ("smallcnn", "smallcnn_att2_concat_pc")):
        return {n: Path(cache) / n / "best.safetensors" for n in ("smallcnn", "smallcnn_att2_concat_pc")}
    root = Path(cache) if cache else tmp_path_factory.mktemp("ckpt")
    # SmallCNN: the LTPA mechanism on a network that trains in seconds on 2 CPU cores
    return {name: _train(root, name) for name in ("smallcnn", "smallcnn_att2_concat_pc")}


@pytest.fixture(scope="session")
def digits_test_data():
    from robustbench_lta.data.registry import load_dataset

    return load_dataset("cluttered-digits", split="test", n=300)
