"""bf16 autocast vs float32 training on this CPU: throughput, and test accuracy of the same recipe (issue 21).

A benchmark script, not a test. Two parts:

1. ``speed``: one model's training step (SGD, batch ``--batch``, channels_last) and its input gradient
   (the inner step of an attack), float32 against ``torch.autocast("cpu", dtype=torch.bfloat16)``,
   the two precisions interleaved over ``--rounds`` rounds of ``--steps`` steps (another job on the
   machine only adds time, so it cannot land on one precision alone); min and median img/s of each,
   the ratio of the fastest rounds.
2. ``parity``: the same recipe and seed trained twice with ``train`` on CIFAR-10 of ``../shared``,
   ``amp: off`` and ``amp: bf16``, and both chosen checkpoints' accuracy on the test images.

    python benchmarks/bf16_training.py --parts speed                      # ~1 minute
    python benchmarks/bf16_training.py --parts parity --epochs 3 --n-train 20000

The CPU (with its bf16 flags) and the thread count are printed first: name them beside every figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adv_train_cifar10 import cpu_name  # noqa: E402
from train_cifar10 import default_cache_dir, unpack  # noqa: E402

from robustbench_lta.config import TrainConfig, validate  # noqa: E402
from robustbench_lta.data.registry import shared_data_dir  # noqa: E402
from robustbench_lta.models.registry import create_model  # noqa: E402
from robustbench_lta.training.trainer import train  # noqa: E402


def _seconds(fn, dtype: torch.dtype | None, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            fn()
    return time.perf_counter() - t0


def speed(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, width=args.width).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).float(), y).backward()
        opt.step()

    def input_gradient() -> None:
        model.eval()
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xi).float(), y), xi)

    print(f"speed: {args.model} width {args.width}, batch {args.batch}, channels_last, "
          f"{args.rounds} rounds x {args.steps} steps per precision")
    for name, fn in (("training step", train_step), ("input gradient", input_gradient)):
        for dtype in (None, torch.bfloat16):  # warm-up: oneDNN builds its kernels on first use
            _seconds(fn, dtype, 1)
        times: dict[str, list[float]] = {"float32": [], "bf16": []}
        for _ in range(args.rounds):
            times["float32"].append(_seconds(fn, None, args.steps))
            times["bf16"].append(_seconds(fn, torch.bfloat16, args.steps))
        rate = {k: [args.batch * args.steps / s for s in v] for k, v in times.items()}
        print(f"  {name:15s} float32 {max(rate['float32']):6.1f} img/s (median "
              f"{statistics.median(rate['float32']):.1f}), bf16 {max(rate['bf16']):6.1f} img/s (median "
              f"{statistics.median(rate['bf16']):.1f}): {max(rate['bf16']) / max(rate['float32']):.2f}x")


def parity(args: argparse.Namespace) -> None:
    shared = shared_data_dir()
    if shared is None:
        sys.exit("error: ../shared/data/cifar10-jpeg is absent: the parity part trains on it")
    root = unpack(shared, default_cache_dir())
    print(f"parity: {args.model} width {args.width}, {args.epochs} epochs on "
          f"{args.n_train or 'all'} training images, seed {args.seed}, test on {args.n_test or 10000}")
    results = {}
    for amp in ("off", "bf16"):
        cfg = validate(TrainConfig, {
            "model": {"name": args.model, "width": args.width},
            "data": {"name": f"imagefolder:{root}", "n_train": args.n_train, "n_test": args.n_test},
            "augment": {"flip": True, "crop_padding": 4}, "epochs": args.epochs, "batch_size": 128,
            "lr": 0.1, "lr_schedule": "onecycle", "momentum": 0.9, "weight_decay": 5e-4,
            "label_smoothing": 0.1, "seed": args.seed, "device": "cpu", "amp": amp, "channels_last": True,
            "val_fraction": 0.02, "threads": args.threads, "out": str(args.out / f"{args.model}_{amp}"),
        }, "bf16_training parity")
        t0 = time.perf_counter()
        res = train(cfg, progress=args.progress)
        results[amp] = (res.test_acc, time.perf_counter() - t0)
        print(f"  amp {amp:4s}: test accuracy {res.test_acc:.2%} (epoch {res.best_epoch}), "
              f"{results[amp][1]:.0f} s this sitting", flush=True)
    diff = results["bf16"][0] - results["off"][0]
    print(f"  bf16 minus float32: {100 * diff:+.2f} points of test accuracy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="speed,parity")
    ap.add_argument("--model", default="vgg16_att3_concat_pc")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bf16_parity"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"speed", "parity"}
    if unknown:
        sys.exit(f"error: unknown parts {sorted(unknown)}: choose speed, parity")
    if "speed" in parts:
        speed(args)
    if "parity" in parts:
        parity(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
