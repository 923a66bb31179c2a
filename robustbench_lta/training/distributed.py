"""Data-parallel training on several processes: torch DistributedDataParallel (DDP), gloo or NCCL.

Launch with ``torchrun --nproc-per-node N -m robustbench_lta train CONFIG`` (or ``robustbench-lta
train --ddp CONFIG`` under torchrun, which insists on it). The CLI calls :func:`init_from_env`; the
trainer asks :func:`current` and, when a process group of two or more is up, trains the same recipe
data-parallel:

- ``batch_size`` stays the *global* batch (each rank takes ``batch_size / N``), so the paper's lr and
  schedule hold unchanged and an epoch has the same number of optimizer steps as on one process.
- Every epoch is one shuffle shared by all ranks (``DistributedSampler`` with the run's seed and the
  epoch), split by rank; augmentation and dropout draw from per-rank seeds, re-derived each epoch
  from (seed, rank, epoch), so a resumed run draws what an uninterrupted one would.
- Gradients are averaged by DDP; BatchNorm statistics are per rank (buffers broadcast from rank 0
  at each forward: DDP's default), so rank 0's model is the one that counts.
- Only rank 0 evaluates, writes checkpoints, trainer state, ``history.csv`` and log lines; the
  checkpoint format is the single-process one (the unwrapped model's weights, no ``module.`` prefix).

CUDA processes use NCCL and ``cuda:LOCAL_RANK``; CPU processes use gloo (what the tests run).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..utils import derive_seed, resolve_device

TORCHRUN_HINT = "torchrun --nproc-per-node N -m robustbench_lta train CONFIG"


@dataclass(frozen=True)
class DistContext:
    """This process's place in a process group of ``world_size`` >= 2."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The training device of this rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK``."""
        if self.backend == "nccl" and requested == "cpu":
            raise UserError("device cpu with an NCCL process group: set device: cuda, or launch on CPUs")
        explicit = torch.device(requested) if requested not in ("auto", "cpu") else None
        if explicit is not None and explicit.type == "cuda" and explicit.index is not None:
            # one fixed index would put every rank on the same GPU
            raise UserError(
                f"device {requested} under torchrun: each process takes cuda:LOCAL_RANK; set device: cuda "
                "and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        dev = resolve_device("cuda" if requested == "auto" and self.backend == "nccl" else requested)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank)
        return dev

    def local_sizes(self, n: int, batch_size: int) -> tuple[int, int]:
        """(images per rank per epoch, images per rank per step) for a global ``batch_size``."""
        if batch_size % self.world_size:
            raise UserError(
                f"batch_size {batch_size} does not split over {self.world_size} processes: "
                f"use a multiple of {self.world_size} (it is the global batch)"
            )
        return math.ceil(n / self.world_size), batch_size // self.world_size

    def epoch_indices(self, n: int, epoch: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        """This rank's share of the epoch's shuffle; reseeds ``generator`` and dropout for (rank, epoch).

        The shuffle is ``DistributedSampler``'s (same seed and epoch on every rank, padded with
        repeats so every rank takes the same number of steps: DDP needs that).
        """
        sampler = torch.utils.data.DistributedSampler(
            range(n), num_replicas=self.world_size, rank=self.rank, shuffle=True,
            seed=derive_seed(seed, "train-batches"), drop_last=False,
        )
        sampler.set_epoch(epoch)
        generator.manual_seed(derive_seed(seed, "train-augment", self.rank, epoch))
        torch.manual_seed(derive_seed(seed, "train-dropout", self.rank, epoch))
        return torch.tensor(list(iter(sampler)), dtype=torch.int64)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DDP (parameters broadcast from rank 0; gradients averaged in backward)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    def sum_over_ranks(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Epoch metrics summed over ranks (so rank 0 logs the whole epoch)."""
        buf = torch.stack([loss_sum.detach().double(), correct.double(),
                           torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf[0].to(loss_sum.dtype), buf[1].round().to(correct.dtype), int(buf[2].item())

    def agree(self, what: str, value: int, device: torch.device) -> None:
        """Fail on every rank when the ranks hold different ``value`` (e.g. the epoch they resume after)."""
        mine = torch.tensor([value], dtype=torch.int64, device=device)
        lo, hi = mine.clone(), mine.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if int(lo) != int(hi):
            raise UserError(
                f"the {self.world_size} processes disagree on the {what} ({int(lo)} vs {int(hi)}): "
                "the out folder must be one folder every process reads (a shared filesystem across nodes)"
            )

    def barrier(self) -> None:
        dist.barrier()

    def describe(self) -> str:
        return f"DDP rank {self.rank}/{self.world_size} ({self.backend})"


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch) set RANK and WORLD_SIZE for every process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current() -> DistContext | None:
    """The process group this process is in, or None (not initialised, or a group of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return DistContext(rank=rank, world_size=dist.get_world_size(), local_rank=local,
                       backend=str(dist.get_backend()))


def init_from_env(device: str = "auto", required: bool = False) -> DistContext | None:
    """Join the process group torchrun describes in the environment (None when not under torchrun).

    NCCL when this process will train on CUDA, else gloo. ``required`` (the ``--ddp`` flag) turns a
    missing torchrun environment into a clear error instead of a single-process run.
    """
    if not launched_by_torchrun():
        if required:
            raise UserError(f"--ddp needs a torchrun launch: {TORCHRUN_HINT}")
        return None
    if dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): "
                "use --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def teardown(ctx: DistContext | None, ok: bool = True) -> None:
    """Leave the process group: after a barrier when training finished (rank 0 has written), at once
    after an error (a barrier would wait forever for ranks stuck elsewhere; torchrun stops them)."""
    if ctx is not None and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
