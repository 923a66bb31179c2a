"""A user's own architecture and dataset, from a file outside the project or an installed package.

The model class lives in a file in a temporary folder (never inside the repository), registered with
``@register_model``; it is listed by ``models --plugins``, trained by ``train --plugins``, swept by
``sweep --plugins``; a checkpoint of it loaded without the plugin names the file to pass. The same
architecture through the entry-point group ``robustbench_lta.models`` of an installed distribution
(a ``.dist-info`` folder on ``sys.path``, exactly what pip writes) needs no ``--plugins`` at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

MODEL_FILE = '''
"""A user's own architecture: nothing of it is in robustbench-lta."""
import torch
from torch import nn

from robustbench_lta import register_model


class MyNet(nn.Module):
    """Two convolutions and a linear head; takes normalised inputs (the registry wraps it)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c = max(4, int(16 * width))
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(family="custom")
def mynet(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """MyNet: a user architecture from a plugin file."""
    return MyNet(num_classes, width)
'''

TRAIN_YAML = """
model: {name: mynet, width: 0.5}
data: {name: cluttered-digits, n_train: 256, n_test: 64}
augment: {flip: false, crop_padding: 0}
epochs: 1
batch_size: 64
lr: 0.05
"""


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "robustbench_lta.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_user_model_file_listed_trained_swept_and_named_on_load(tmp_path: Path) -> None:
    user = tmp_path / "elsewhere"
    user.mkdir()
    plugin = user / "mynet.py"
    plugin.write_text(MODEL_FILE)
    config = tmp_path / "mynet.yaml"
    config.write_text(TRAIN_YAML)

    # without the plugin: the one-line error says how to load it
    res = run("train", str(config), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "unknown model 'mynet'" in res.stderr and "--plugins" in res.stderr

    listed = run("models", "my*", "--plugins", str(plugin))
    assert listed.returncode == 0, listed.stderr
    assert "mynet" in listed.stdout and "file:" in listed.stdout

    res = run("train", str(config), "--plugins", str(user), "--threads", "1", "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    origin = card["model"]["origin"]
    assert card["model"]["name"] == "mynet" and origin["file"] == str(plugin.resolve())
    assert origin["source"] == f"folder:{user.resolve()}"
    assert card["threads"] == 1 and card["training"]["threads"] == 1
    assert card["training"]["plugins"] == [str(user)]

    # a sweep without the plugin: the error names the file to pass
    res = run("sweep", "--model", str(tmp_path / "run"), "--attack", "fgsm", "--eps", "0,8", "--n", "16",
              "--out", str(tmp_path / "res"), "--quiet")
    assert res.returncode == 2, res.stderr
    assert "'mynet'" in res.stderr and f"--plugins {plugin.resolve()}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    res = run("sweep", "--model", str(tmp_path / "run"), "--attack", "fgsm", "--eps", "0,8", "--n", "16",
              "--plugins", str(plugin), "--threads", "1", "--out", str(tmp_path / "res"), "--quiet",
              "--set", "sanity_samples=8")
    assert res.returncode == 0, res.stderr
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    rows = summary[summary["attack"] == "fgsm"]
    assert (rows["status"] == "ok").all() and len(rows) == 2
    clean = rows["clean_acc"].iloc[0]
    assert abs(rows[rows["eps"] == 0]["robust_acc"].iloc[0] - clean) < 1e-9  # eps 0 = clean
    manifest = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert manifest["config"]["threads"] == 1
    assert manifest["config"]["plugins"] == [str(plugin)]


ENTRY_POINT_PACKAGE = {
    "tinyarch/__init__.py": MODEL_FILE.replace("def mynet(", "def tinyarch_net(")
    + textwrap.dedent('''
    from robustbench_lta import register_dataset
    from robustbench_lta.data import ImageDataset
    import numpy as np


    @register_dataset("tiny-squares", description="bright squares on black", num_classes=2,
                      image_size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3)
    def tiny_squares(split, root, download, n, seed):
        rng = np.random.default_rng(seed + (split == "test"))
        y = rng.integers(0, 2, 32)
        x = np.zeros((32, 3, 8, 8), np.uint8)
        x[y == 1, :, 2:6, 2:6] = 255
        return ImageDataset(x, y, classes=["empty", "square"], name="tiny-squares",
                            mean=(0.5,) * 3, std=(0.5,) * 3)
    '''),
    "tinyarch-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinyarch\nVersion: 0.1\n",
    "tinyarch-0.1.dist-info/entry_points.txt": (
        "[robustbench_lta.models]\ntinyarch = tinyarch\n\n[robustbench_lta.datasets]\ntinyarch = tinyarch\n"
    ),
}


def test_user_model_and_dataset_from_an_installed_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for rel, text in ENTRY_POINT_PACKAGE.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = run("models", "tiny*", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "tinyarch_net" in listed.stdout and "entry-point:tinyarch" in listed.stdout
    data = run("data", env=env)
    assert data.returncode == 0 and "tiny-squares" in data.stdout, data.stderr
    config = tmp_path / "ep.yaml"
    config.write_text("model: {name: tinyarch_net, width: 0.25}\ndata: {name: tiny-squares}\n"
                      "augment: {flip: false, crop_padding: 0}\nepochs: 1\nbatch_size: 16\n")
    res = run("train", str(config), "--out", str(tmp_path / "run"), env=env)
    assert res.returncode == 0, res.stderr
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    assert card["model"]["origin"]["source"] == "entry-point:tinyarch"
    # the package gone: loading says which package to install
    res = run("sweep", "--model", str(tmp_path / "run"), "--attack", "fgsm", "--eps", "0", "--n", "8",
              "--out", str(tmp_path / "res"), "--quiet")
    assert res.returncode == 2 and "install the package 'tinyarch'" in res.stderr, res.stderr
