"""Push fast adversarial training into catastrophic overfitting on CIFAR-10, and watch the flag fire.

A benchmark script, not a test (minutes, real data). Wong et al. (2020, Fig. 3) show that FGSM
training from a random start overfits catastrophically once its step is large (1.25 eps is safe at
8/255; 2 eps and more collapse): validation PGD accuracy drops to about zero within an epoch while
FGSM accuracy jumps up. This trains ``fgsm-rs`` at Linf 8/255 with a step of ``--step`` /255 (default
16 = 2 eps) on a subset of CIFAR-10 and prints the per-epoch history the trainer wrote, the flagged
epochs and the epoch it selected::

    python benchmarks/fast_at_collapse.py --out runs/co                      # ~5 min on 2 cores
    python benchmarks/fast_at_collapse.py --out runs/co_safe --step 10       # the safe step

Exit status 0 when the run finished (collapsed or not: the output says which).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import default_cache_dir, unpack  # noqa: E402

from robustbench_lta.config import TrainConfig, validate  # noqa: E402
from robustbench_lta.data.registry import shared_data_dir  # noqa: E402
from robustbench_lta.training.trainer import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--step", type=float, default=16.0, help="fgsm-rs step in /255 units (2 eps collapses)")
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--lr", type=float, default=0.2, help="one-cycle peak")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    shared = shared_data_dir()
    if shared is None:
        sys.exit("error: no ../shared/data/cifar10-jpeg beside the repository")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = unpack(shared, default_cache_dir())
    cfg = validate(TrainConfig, {
        "model": {"name": args.model, "width": args.width},
        "data": {"name": f"imagefolder:{root}", "n_train": args.n_train, "n_test": 1000},
        "epochs": args.epochs, "batch_size": 128, "lr": args.lr, "lr_schedule": "onecycle", "seed": 0,
        "device": "cpu", "val_fraction": 0.05, "out": str(args.out),
        "adversarial": {"method": "fgsm-rs", "eps": args.eps, "step_size": args.step, "eval_n": 500},
    }, source="benchmark options")
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    rows = list(csv.DictReader((args.out / "history.csv").open()))
    print(f"{cfg.adversarial.label()}, step {args.step:g}/255, {args.model} width {args.width}, "
          f"{args.n_train} CIFAR-10 images, {time.perf_counter() - t0:.0f} s")
    print("| epoch | train acc | val acc | PGD-10 val acc | FGSM val acc | collapsed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['train_acc']} | {r['val_acc']} | {r['robust_val_acc']} | "
              f"{r['fgsm_val_acc']} | {r['collapsed']} |")
    card = json.loads((args.out / "best.json").read_text())
    print(f"catastrophic overfitting: {card['catastrophic_overfitting']}; selected epoch {result.best_epoch} "
          f"(robust val acc {result.best_acc:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
