"""The command line as a user meets it: listings, a sweep with a dropped-in plugin, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "robustbench_lta.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_models_lists_the_registry():
    res = cli("models")
    assert res.returncode == 0, res.stderr
    for name in ("vgg16", "resnet18", "resnet164", "vgg16_att3_concat_pc", "vgg16_att1_indep_dp",
                 "resnet164_att2_concat_pc"):
        assert name in res.stdout
    assert "models" in res.stdout.splitlines()[0] or "models" in res.stdout


def test_data_lists_datasets_with_availability():
    res = cli("data")
    assert res.returncode == 0, res.stderr
    assert "cluttered-digits" in res.stdout and "cifar10" in res.stdout


def test_attacks_lists_builtins_and_adapters():
    res = cli("attacks")
    assert res.returncode == 0, res.stderr
    for name in ("fgsm", "pgd-linf", "pgd-l2", "cw-l2", "deepfool", "square", "autoattack", "boundary",
                 "gaussian-noise", "ta:<Class>", "fb:<Class>"):
        assert name in res.stdout, name


PLUGIN = '''
import torch
from robustbench_lta.plugins import Attack, ThreatModel, AttackKind, register_attack


@register_attack
class SaltAndPepper(Attack):
    """Sets random pixels to 0 or 1: an l0 noise baseline."""
    name = "my-salt-pepper"
    threat_model = ThreatModel.LINF
    kind = AttackKind.RANDOM
    defaults = {"fraction": 0.05}

    def perturb(self, model, x, y, eps):
        g = self.generator(x.device)
        noise = torch.rand(x.shape, generator=g, device=x.device) * 2 - 1
        return (x + eps * noise.sign()).clamp(0, 1)
'''


def test_sweep_cli_with_a_dropped_in_plugin(trained_checkpoints, tmp_path):
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "salt.py").write_text(textwrap.dedent(PLUGIN))
    listed = cli("attacks", "--plugins", str(plugins))
    assert "my-salt-pepper" in listed.stdout and "folder:" in listed.stdout
    out = tmp_path / "res"
    res = cli("sweep", "--model", str(trained_checkpoints["smallcnn"]), "--attack", "fgsm",
              "--attack", "my-salt-pepper:fraction=0.1", "--eps", "0,4", "--n", "32",
              "--plugins", str(plugins),
              "--out", str(out), "--quiet", "--set", "sanity_samples=8")
    assert res.returncode == 0, res.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert {"fgsm", "my-salt-pepper", "worst-case"} <= set(summary["attack"])
    assert (summary["status"] == "ok").all()


def test_a_sweep_with_attention_attacks_and_a_baseline_exits_0_with_a_note(trained_checkpoints, tmp_path):
    """An attention attack on a model without attention is not a failure of the sweep (exit 0)."""
    out = tmp_path / "res"
    res = cli("sweep", "--model", str(trained_checkpoints["smallcnn"]), "--model",
              str(trained_checkpoints["smallcnn_att2_concat_pc"]), "--attack", "fgsm", "--attack",
              "pgd-attn-js:steps=2", "--eps", "0,4", "--n", "16", "--data", "cluttered-digits",
              "--out", str(out), "--quiet", "--set", "sanity_samples=0")
    assert res.returncode == 0, res.stderr
    note = [ln for ln in res.stderr.splitlines() if ln.startswith("note: pgd-attn-js does not apply to")]
    assert len(note) == 1 and "smallcnn" in note[0] and "att2" not in note[0], res.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["status"]) == {"ok", "not-applicable"}


@pytest.mark.parametrize("args, needle", [
    (["sweep", "--model", "no_such_model", "--attack", "fgsm"], "neither a checkpoint"),
    (["sweep", "--model", "vgg16", "--attack", "fgsm", "--eps", "a,b"], "--eps"),
    (["sweep", "--model", "vgg16", "--attack", "no-such-attack", "--n", "4"], "unknown"),
    (["sweep", "--model", "vgg16", "--attack", "fgsm", "--set", "batch_size=-1"], "batch_size"),
    (["train", "configs/does-not-exist.yaml"], "not found"),
    (["sweep", "--attack", "fgsm"], "no models"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(args, needle, tmp_path):
    res = cli(*args, "--out", str(tmp_path / "o")) if args[0] == "sweep" else cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in res.stderr


def test_bad_train_config_keys_are_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: vgg16}\nepochz: 3\n")
    res = cli("train", str(cfg))
    assert res.returncode == 2 and "unknown key 'epochz'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_pickle_checkpoint_is_refused_from_the_cli(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04K\x01.")  # a pickle; it must never be unpickled
    res = cli("sweep", "--model", str(bad), "--attack", "fgsm", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "pickle" in res.stderr.lower()


def test_default_threads_count_what_other_processes_use_now(monkeypatch) -> None:
    """A process spinning on one core counts as ~1 busy core (measured over the window, not the load
    average, which still remembers a job that just ended); this process's own work does not count."""
    import subprocess
    import sys

    from robustbench_lta import config

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = config.busy_cores(window=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.7
    monkeypatch.setattr(config, "_DEFAULT_THREADS", None)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(config, "busy_cores", lambda window=0.1: 1.2)
    assert config.default_threads() == 1
    monkeypatch.setattr(config, "_DEFAULT_THREADS", None)
    monkeypatch.setattr(config, "busy_cores", lambda window=0.1: 0.3)  # a finished pip install
    assert config.default_threads() == 2
    monkeypatch.setattr(config, "_DEFAULT_THREADS", None)
    monkeypatch.setattr(config, "busy_cores", lambda window=0.1: 5.0)  # never below one thread
    assert config.default_threads() == 1
