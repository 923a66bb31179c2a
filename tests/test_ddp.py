"""Data-parallel training (DDP) on two gloo processes on the CPU: same weights on both ranks, one checkpoint.

The spawned processes run the real trainer (``train(config)``) inside a process group, as torchrun
would launch them; a second test launches ``torchrun -m robustbench_lta train`` itself.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from robustbench_lta.config import TrainConfig, validate
from robustbench_lta.errors import UserError
from robustbench_lta.training import distributed
from robustbench_lta.training.checkpoint import load_model

WORLD = 2
EPOCHS = 2
REPO = Path(__file__).resolve().parents[1]


def _config(out: Path) -> dict:
    return {
        "model": {"name": "smallcnn", "width": 0.25},
        "data": {"name": "cluttered-digits", "n_train": 96, "n_test": 32},
        "augment": {"flip": True, "crop_padding": 2},
        "epochs": EPOCHS, "batch_size": 16, "lr": 0.05, "lr_step_epochs": 1, "seed": 3,
        "device": "cpu", "out": str(out),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str, dump: str, epochs: int = EPOCHS) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from robustbench_lta.training.trainer import train

        cfg = validate(TrainConfig, {**_config(Path(out)), "epochs": epochs})
        model_holder: dict = {}
        original = distributed.DistContext.wrap

        def keep(self, model, device):  # remember this rank's model to dump its weights afterwards
            model_holder["m"] = model
            return original(self, model, device)

        distributed.DistContext.wrap = keep
        train(cfg, progress=False)
        # contiguous: on CPU too the trainer keeps NHWC (channels_last) weights
        params = {k: v.detach().contiguous() for k, v in model_holder["m"].named_parameters()}
        save_file(params, str(Path(dump) / f"rank{rank}_e{epochs}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    out, dump = root / "run", root / "dump"
    dump.mkdir()
    mp.start_processes(_worker, args=(WORLD, _free_port(), str(out), str(dump)), nprocs=WORLD,
                       join=True, start_method="spawn")
    return out, dump


def test_ranks_hold_identical_weights(ddp_run: tuple[Path, Path]) -> None:
    out, dump = ddp_run
    r0, r1 = (load_file(str(dump / f"rank{r}_e{EPOCHS}.safetensors")) for r in range(WORLD))
    assert r0.keys() == r1.keys() and len(r0) > 0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # and the weights did move from their initialisation (the ranks trained, not just agreed)
    init = validate(TrainConfig, _config(out))
    from robustbench_lta.data.registry import load_dataset
    from robustbench_lta.training.trainer import build_model

    torch.manual_seed(init.seed)
    fresh = dict(build_model(init, load_dataset("cluttered-digits", split="train", n=8)).named_parameters())
    assert any(not torch.equal(fresh[k].detach(), r0[k]) for k in r0)


def test_one_checkpoint_written_by_rank0(ddp_run: tuple[Path, Path]) -> None:
    out, dump = ddp_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.json", "best.safetensors", "history.csv", "last.json", "last.safetensors",
                     "trainer_state.json", "trainer_state.safetensors"]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))  # one writer, one row per epoch
    # the single-process format: loads as a plain model (no DDP "module." prefix), rank 0's weights
    model = load_model(out / "last.safetensors")
    r0 = load_file(str(dump / f"rank0_e{EPOCHS}.safetensors"))
    for key, value in model.named_parameters():
        assert torch.equal(value.detach(), r0[key]), key
    # 96 images over 2 ranks, global batch 16 -> 8 per rank: 6 optimizer steps per epoch, all images seen
    assert float(rows[0]["images_per_s"]) > 0


def test_resume_continues_on_both_ranks(ddp_run: tuple[Path, Path]) -> None:
    """Raising epochs and running again resumes after the last epoch; the ranks still agree."""
    first, dump = ddp_run
    out = first.parent / "resumed"
    shutil.copytree(first, out)  # leaves the first run's folder as the other tests expect it
    mp.start_processes(_worker, args=(WORLD, _free_port(), str(out), str(dump), EPOCHS + 1), nprocs=WORLD,
                       join=True, start_method="spawn")
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 2))
    r0, r1 = (load_file(str(dump / f"rank{r}_e{EPOCHS + 1}.safetensors")) for r in range(WORLD))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    before = load_file(str(dump / f"rank0_e{EPOCHS}.safetensors"))
    assert any(not torch.equal(before[k], r0[k]) for k in r0)


def test_epoch_split_covers_every_image_once() -> None:
    ctxs = [distributed.DistContext(rank=r, world_size=3, local_rank=r, backend="gloo") for r in range(3)]
    shares = [c.epoch_indices(10, epoch=1, seed=0, generator=torch.Generator()) for c in ctxs]
    assert all(len(s) == 4 for s in shares)  # padded with repeats: every rank takes the same steps
    assert set(torch.cat(shares).tolist()) == set(range(10))
    again = ctxs[0].epoch_indices(10, epoch=1, seed=0, generator=torch.Generator())
    assert torch.equal(again, shares[0])
    assert not torch.equal(ctxs[0].epoch_indices(10, epoch=2, seed=0, generator=torch.Generator()), shares[0])
    with pytest.raises(UserError, match="multiple of 3"):
        ctxs[0].local_sizes(100, 16)


def test_ddp_flag_without_torchrun_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="torchrun --nproc-per-node"):
        distributed.init_from_env("cpu", required=True)
    assert distributed.init_from_env("cpu") is None


@pytest.mark.slow
def test_torchrun_cli(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m robustbench_lta train CONFIG``: one checkpoint, one log.

    ``python -m torch.distributed.run`` is what the ``torchrun`` script runs (this venv has no script).
    """
    import yaml

    cfg_path = tmp_path / "ddp.yaml"
    cfg = _config(tmp_path / "run")
    cfg["epochs"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(_free_port()), "-m", "robustbench_lta", "train", "--ddp", str(cfg_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1, proc.stdout  # rank 0 alone reports
    assert "DDP x2 (gloo)" in proc.stdout
    assert (tmp_path / "run" / "last.safetensors").is_file()
    load_model(tmp_path / "run" / "last.safetensors")
