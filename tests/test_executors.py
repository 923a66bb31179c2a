"""The Ray executor: units sharded over tasks give the local executor's tables, and survive kill -9
of a worker or of the driver (the manifest never says finished while interrupted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from robustbench_lta.config import SweepConfig, validate
from robustbench_lta.engine.executors import run_with_executor

pytestmark = pytest.mark.slow

SUICIDE = '''
import os, signal
from pathlib import Path
from robustbench_lta.plugins import Attack, ThreatModel, register_attack


@register_attack
class KillsItsWorkerOnce(Attack):
    """The first call anywhere kills its own process (kill -9 of a worker mid-sweep), later calls
    are a no-op attack."""
    name = "test-kill-worker-once"
    threat_model = ThreatModel.LINF
    defaults = {"marker": ""}  # a parameter, not an env var: Ray workers started earlier lack it

    def perturb(self, model, x, y, eps):
        marker = Path(self.params["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return x.clone()
'''


def _cfg(ckpts, out, executor: str, attacks=None, plugins=()) -> SweepConfig:
    return validate(SweepConfig, {
        "models": [{"name": name, "source": str(path)} for name, path in ckpts.items()],
        "attacks": attacks or [{"name": "fgsm"}, {"name": "pgd-linf", "params": {"steps": 3}}],
        "eps": [0, 2, 8], "n": 48, "batch_size": 16, "sanity_samples": 8, "attention_samples": 2,
        "shard_size": 12, "executor": executor, "out": str(out), "plugins": [str(p) for p in plugins],
        "ray_cpus_per_task": 1,
    })


def _same(a: Path, b: Path) -> None:
    for name in ("summary", "samples", "sanity", "attention"):
        x, y = pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet")
        drop = [c for c in ("seconds",) if c in x.columns]
        # float32 drift and norms may differ in the last bits (threads per process): equal to rounding
        # (Ray tasks run 1 thread, the CI driver 2: float32 sums differ in order)
        pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop), obj=name, check_exact=False,
                                      rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_ray_executor_matches_local_with_four_units_per_cell(trained_checkpoints, tmp_path, ray_local):
    local = run_with_executor(_cfg(trained_checkpoints, tmp_path / "local", "local"), progress=False)
    on_ray = run_with_executor(_cfg(trained_checkpoints, tmp_path / "ray", "ray"), progress=False)
    pd.testing.assert_frame_equal(on_ray.drop(columns=["seconds"]), local.drop(columns=["seconds"]),
                                  check_exact=False, atol=1e-5)
    _same(tmp_path / "ray", tmp_path / "local")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["counts"]["units_run"] == 2 * 2 * 4  # 2 models x 2 attacks x 4 shards
    cell_dirs = list((tmp_path / "ray" / "units").glob("*__*"))
    assert all(len(list(d.glob("*.json"))) == 4 for d in cell_dirs)


def test_kill_9_of_a_worker_is_retried_to_the_same_tables(trained_checkpoints, tmp_path, ray_local,
                                                           monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "suicide.py").write_text(SUICIDE)
    killer = {"name": "test-kill-worker-once", "params": {"marker": str(tmp_path / "killed")}}
    attacks = [{"name": "fgsm"}, killer]
    (tmp_path / "killed").write_text("local")  # the local reference run must not kill this process
    run_with_executor(_cfg(trained_checkpoints, tmp_path / "local", "local", attacks, [plugins]),
                      progress=False)
    (tmp_path / "killed").unlink()
    run_with_executor(_cfg(trained_checkpoints, tmp_path / "ray", "ray", attacks, [plugins]), progress=False)
    assert (tmp_path / "killed").is_file()  # a worker really died mid-sweep
    _same(tmp_path / "ray", tmp_path / "local")


# The driver's Ray tasks are pickled from ray_executor's module global at submit time, so replacing it
# here reaches the Ray workers (a patch of Worker.run_unit would stay in the driver, which runs no
# unit). Once 3 units are on disk every task holds before and after its unit, so the sweep cannot
# finish before the kill however busy the machine is.
SLOW_DRIVER = '''
import sys, time
from pathlib import Path
from robustbench_lta.engine.executors import ray_executor

real = ray_executor._run_unit


def held(cfg_json, *a, **k):
    units = Path(cfg_json["out"]) / "units"

    def hold():
        while len(list(units.glob("*/*.json"))) >= 3:
            time.sleep(1)

    hold()
    out = real(cfg_json, *a, **k)
    hold()
    return out


ray_executor._run_unit = held
from robustbench_lta.cli import main
main(sys.argv[1:])
'''


def test_kill_9_of_the_driver_then_rerun(trained_checkpoints, tmp_path, ray_local):
    """The driver (this CLI process) is killed mid-sweep; the manifest is never 'finished' meanwhile,
    and a re-run resumes to the tables of an uninterrupted run."""
    cfg = _cfg(trained_checkpoints, tmp_path / "cut", "ray")
    path = tmp_path / "sweep.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    script = tmp_path / "slow_driver.py"
    script.write_text(SLOW_DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([sys.executable, str(script), "sweep", str(path), "--quiet"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = tmp_path / "cut" / "units"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(units.glob("*/*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the local Ray it started goes with it
    except ProcessLookupError:
        pass
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "running" and not (tmp_path / "cut" / "summary.parquet").exists()
    done_before = len(list(units.glob("*/*.json")))
    assert 3 <= done_before < 16  # the held tasks let at most the units in flight finish
    from robustbench_lta.cli import main

    main(["sweep", str(path), "--quiet"])  # resumes on Ray (this process's local instance)
    run_with_executor(_cfg(trained_checkpoints, tmp_path / "ref", "local"), progress=False)
    _same(tmp_path / "cut", tmp_path / "ref")
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["status"] == "finished"


def test_a_worker_hashes_only_its_shard_and_refuses_other_data(monkeypatch) -> None:
    """The driver hashes an in-memory dataset once; a Ray worker takes that hash and checks only the
    samples of the unit it runs (here without Ray: the same functions the tasks call)."""
    import torch

    from robustbench_lta.data.registry import ImageDataset
    from robustbench_lta.engine import inputs
    from robustbench_lta.engine.executors.ray_executor import _check_shard
    from robustbench_lta.errors import UserError

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    ds = ImageDataset(images, labels, classes=[str(i) for i in range(10)], name="planted",
                      mean=(0.5,) * 3, std=(0.5,) * 3)
    driver = inputs.from_image_dataset(ds, None)
    assert driver.shard_sha256(0, 40) == driver.fingerprint["sha256"]

    hashed: list[int] = []
    real = inputs._hash_tensors
    monkeypatch.setattr(inputs, "_hash_tensors", lambda *t: hashed.append(len(t[0])) or real(*t))
    worker_source = inputs.from_image_dataset(ds, None, content_sha256=driver.fingerprint["sha256"])
    assert hashed == [] and worker_source.fingerprint == driver.fingerprint

    class _Worker:
        source = worker_source

    _check_shard(_Worker, "m", 10, 20, driver.shard_sha256(10, 20))
    assert hashed[-1] == 10  # this shard only
    changed = images.clone()
    changed[15] ^= 1  # one pixel bit of one sample differs on this node
    other = ImageDataset(changed, labels, classes=ds.classes, name="planted", mean=ds.mean, std=ds.std)

    class _OtherWorker:
        source = inputs.from_image_dataset(other, None, content_sha256=driver.fingerprint["sha256"])

    _check_shard(_OtherWorker, "m", 20, 30, driver.shard_sha256(20, 30))  # its shard is the same
    with pytest.raises(UserError, match=r"worker sees other data for m \(samples 10\.\.19\)"):
        _check_shard(_OtherWorker, "m", 10, 20, driver.shard_sha256(10, 20))
