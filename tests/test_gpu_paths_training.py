"""Issue 27, the training side: CUDA and DDP defects shown on CPU (fake indexed devices, gloo ranks).

Each test is named after the defect it guards and fails on 58a4994:
1. resident CUDA data took the pinned-host path (``cuda:0 != cuda``) and ``pin_memory`` raised;
2. a CUDA test read ``history[...]["test_acc"]``, a column protocol v2 removed;
6. a resumed DDP run had non-main ranks test the chosen epoch and write cards and state;
10. ``train --seeds`` under torchrun trained the whole family on every rank into the same folders,
    and an explicit ``cuda:N`` put every rank on GPU N.
"""

from __future__ import annotations

import ast
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from robustbench_lta import devices
from robustbench_lta.errors import UserError
from robustbench_lta.training import distributed

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- defect 1
class _FakeTensor:
    """Stands in for a uint8 split: reports ``device``, pins only on the host (as torch does)."""

    def __init__(self, device: str, n: int = 8) -> None:
        self.device = torch.device(device)
        self.n = n
        self.shape = (n,)
        self.pinned = 0

    def numel(self) -> int:
        return self.n

    def element_size(self) -> int:
        return 1

    def pin_memory(self) -> _FakeTensor:
        if self.device.type != "cpu":  # torch: "cannot pin 'torch.cuda.ByteTensor' only dense CPU tensors"
            raise RuntimeError(f"cannot pin '{self.device}' tensor: only dense CPU tensors can be pinned")
        self.pinned += 1
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> _FakeTensor:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)  # what CUDA tensors report
        return _FakeTensor(str(dev), self.n)

    def __getitem__(self, index: object) -> _FakeTensor:
        return self


class _FakeIndex:
    def to(self, device: object, non_blocking: bool = False) -> _FakeIndex:
        return self


class _FakeSplit:
    def __init__(self) -> None:
        self.images, self.labels = _FakeTensor("cpu"), _FakeTensor("cpu")


def test_defect1_resident_cuda_split_is_indexed_not_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``resolve_device('cuda')`` has no index; the split moved there reports ``cuda:0``."""
    from robustbench_lta.training.batches import DeviceBatches

    monkeypatch.setattr(devices, "_current_index", lambda device_type: 0)
    batches = DeviceBatches(_FakeSplit(), torch.device("cuda"))
    x, y = batches.get(_FakeIndex())  # 58a4994: pin_memory() on the CUDA copy -> RuntimeError
    assert x.device == torch.device("cuda", 0) and y.device == torch.device("cuda", 0)


def test_defect1_device_identity_with_fake_indices() -> None:
    on = lambda index: (lambda device_type: index)  # noqa: E731 - the current-device probe, faked
    assert devices.same_device("cuda:0", "cuda", on(0))
    assert not devices.same_device("cuda:1", "cuda", on(0))
    assert devices.same_device("cuda:1", "cuda", on(1))
    assert devices.same_device("cpu", torch.device("cpu"))
    assert devices.same_device("meta", "meta") and not devices.same_device("meta", "cpu")
    assert devices.canonical("cuda", on(3)) == torch.device("cuda", 3)
    assert devices.needs_pinned_copy("cpu", "cuda:0")
    assert not devices.needs_pinned_copy("cuda:0", "cuda")  # pin_memory raises on a CUDA tensor
    assert not devices.needs_pinned_copy("cpu", "cpu")
    t = torch.zeros(2)
    assert devices.to_device(t, "cpu") is t  # no copy when already there
    assert devices.to_device(t, "meta").device.type == "meta"


# ------------------------------------------------------------------------------------- defect 2
def test_defect2_history_rows_are_read_by_their_columns() -> None:
    """Every key a test or benchmark reads from a training-history row is a column the trainer writes."""
    from robustbench_lta.training.trainer import HISTORY_COLUMNS

    bad = []
    files = [*(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            # <...>.history[<i>]["key"]
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, str) and isinstance(node.value, ast.Subscript)
                    and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "history"):
                if node.slice.value not in HISTORY_COLUMNS:
                    bad.append(f"{path.name}:{node.lineno} reads {node.slice.value!r}")
    assert not bad, f"history has no such column: {bad}"


# --------------------------------------------------------------------------------- defects 6, 10
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_cfg(out: Path, epochs: int) -> dict:
    return {
        "model": {"name": "smallcnn", "width": 0.25},
        "data": {"name": "cluttered-digits", "n_train": 64, "n_test": 16},
        "epochs": epochs, "batch_size": 16, "lr": 0.05, "seed": 3, "device": "cpu", "out": str(out),
    }


def _record_writes_off_rank0(rank: int, out: str, log: str) -> None:
    """On ranks other than 0, log every file put into ``out`` (all writes end in os.replace)."""
    if rank == 0:
        return
    real = os.replace

    def spy(src: object, dst: object, *a: object, **k: object) -> None:
        if str(dst).startswith(out):
            with open(log, "a") as fh:
                fh.write(f"rank{rank} wrote {dst}\n")
        real(src, dst, *a, **k)

    os.replace = spy  # type: ignore[assignment]


def _resume_worker(rank: int, world: int, port: int, out: str, log: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from robustbench_lta.config import TrainConfig, validate
        from robustbench_lta.training.trainer import train

        _record_writes_off_rank0(rank, out, log)
        train(validate(TrainConfig, _train_cfg(Path(out), 2)), progress=False)
    finally:
        dist.destroy_process_group()


def test_defect6_resumed_ddp_run_writes_on_rank0_only(tmp_path: Path) -> None:
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.training.trainer import STATE_NAME, train

    out, log = tmp_path / "run", tmp_path / "writes.log"
    train(validate(TrainConfig, _train_cfg(out, 1)), progress=False)
    # as if Ctrl-C came in epoch 2 of 2: epoch 1 saved, the chosen epoch not yet tested
    state_path = out / f"{STATE_NAME}.json"
    state = json.loads(state_path.read_text())
    state["tested"] = {}
    state_path.write_text(json.dumps(state))
    mp.start_processes(_resume_worker, args=(2, _free_port(), str(out), str(log)), nprocs=2, join=True,
                       start_method="spawn")
    assert not log.exists(), log.read_text()  # 58a4994: rank1 wrote best.json, last.json, trainer_state
    card = json.loads((out / "best.json").read_text())
    assert card["test_measurements"] == 1 and "clean_test_accuracy" in card


def _cli_worker(rank: int, world: int, port: int, cfg_path: str, out: str, log: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    _record_writes_off_rank0(rank, out, log)
    from robustbench_lta.cli import main

    try:
        main(["train", cfg_path, "--seeds", "0,1"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


@pytest.mark.slow
def test_defect10_seeds_under_torchrun_train_each_seed_once_data_parallel(tmp_path: Path) -> None:
    out, log = tmp_path / "fam", tmp_path / "writes.log"
    cfg_path = tmp_path / "fam.yaml"
    cfg_path.write_text(yaml.safe_dump({**_train_cfg(out, 1), "threads": 1}))
    mp.start_processes(_cli_worker, args=(2, _free_port(), str(cfg_path), str(out), str(log)), nprocs=2,
                       join=True, start_method="spawn")
    assert not log.exists(), log.read_text()  # 58a4994: each rank trained the family on its own
    fam = json.loads((out / "family.json").read_text())
    assert fam["seeds"] == [0, 1] and sorted(fam["best_test_accuracy"]) == ["0", "1"]
    for seed in (0, 1):
        card = json.loads((out / f"seed{seed}" / "last.json").read_text())
        assert card["family"]["seed"] == seed


def test_defect10_explicit_gpu_index_under_ddp_is_refused() -> None:
    ctx = distributed.DistContext(rank=1, world_size=2, local_rank=1, backend="nccl")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES"):
        ctx.device("cuda:0")  # 58a4994: every rank on cuda:0 (or "CUDA is not available" on CPU)
