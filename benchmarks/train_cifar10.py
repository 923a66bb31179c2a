"""Train the VGG-16 baseline and its attention variant on CIFAR-10 (JPEG copy) at a CPU scale.

A benchmark script, not a test: it unpacks ``../shared/data/cifar10-jpeg/{train,test}.tar.gz`` once
into a cache folder outside the repository, loads it as ``imagefolder:`` data, trains each model
with the paper's optimiser (SGD, momentum 0.9, weight decay 5e-4) on a subset for a few epochs, and
prints test accuracy and training throughput per model::

    python benchmarks/train_cifar10.py                       # default scale, ~10-15 min on 2 cores
    python benchmarks/train_cifar10.py --n-train 500 --n-test 200 --epochs 1 --width 0.0625
    python benchmarks/train_cifar10.py --csv reports/train_cifar10.csv

Accuracies at this scale are far below the paper's (300 epochs on 50,000 images); the point is that
both models train with the same pipeline and how fast they go.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from robustbench_lta.config import TrainConfig, validate
from robustbench_lta.data.registry import shared_data_dir
from robustbench_lta.errors import UserError
from robustbench_lta.training.trainer import train

DEFAULT_MODELS = ("vgg16", "vgg16_att3_concat_pc")
ARCHIVES = ("train.tar.gz", "test.tar.gz")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustbench_lta" / "cifar10-jpeg"


def unpack(shared: Path, cache: Path) -> Path:
    """Extract the train/test archives into ``cache`` once (a marker records which archives)."""
    for name in ARCHIVES:
        if not (shared / name).is_file():
            sys.exit(f"error: {shared / name} is missing: the shared CIFAR-10 JPEG data is incomplete")
    stamp = hashlib.sha256(
        "".join(
            f"{n}:{(shared / n).stat().st_size}:{(shared / n).stat().st_mtime_ns}" for n in ARCHIVES
        ).encode()
    ).hexdigest()[:16]
    marker = cache / f".unpacked-{stamp}"
    if marker.exists() and (cache / "train").is_dir() and (cache / "test").is_dir():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"unpacking CIFAR-10 JPEGs into {cache} ...", file=sys.stderr)
    for name in ARCHIVES:
        with tarfile.open(shared / name) as tar:
            tar.extractall(cache, filter="data")
    marker.touch()
    print(f"  done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return cache


def cifar10_test(n: int):
    """The first ``n`` CIFAR-10 test images of the JPEG copy in ``../shared`` (unpacked once)."""
    from robustbench_lta.data.registry import load_dataset

    shared = shared_data_dir()
    if shared is None:
        sys.exit("error: ../shared/data/cifar10-jpeg is absent")
    return load_dataset(f"imagefolder:{unpack(shared, default_cache_dir())}", split="test", n=n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registry names to train")
    p.add_argument("--width", type=float, default=0.25, help="channel-width multiplier (1.0 = paper)")
    p.add_argument("--n-train", type=int, default=5000, help="training images (first N, class-balanced)")
    p.add_argument("--n-test", type=int, default=2000, help="test images (first N, class-balanced)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-step-epochs", type=int, default=2, help="halve the lr every this many epochs")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--shared", type=Path, default=None, help="folder with train.tar.gz/test.tar.gz")
    p.add_argument("--cache", type=Path, default=None, help=f"unpack here (default {default_cache_dir()})")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    args = p.parse_args(argv)

    shared = args.shared or shared_data_dir()
    if shared is None or not shared.is_dir():
        sys.exit(
            "error: the shared CIFAR-10 JPEG data is absent (looked for $ROBUSTBENCH_LTA_SHARED and "
            "../shared/data/cifar10-jpeg next to the repository): pass --shared FOLDER"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    root = unpack(shared, args.cache or default_cache_dir())

    rows = []
    with tempfile.TemporaryDirectory(prefix="train_cifar10_") as tmp:
        runs = args.out or Path(tmp)
        for name in args.models:
            cfg = validate(
                TrainConfig,
                {
                    "model": {"name": name, "width": args.width},
                    "data": {"name": f"imagefolder:{root}", "n_train": args.n_train, "n_test": args.n_test},
                    "augment": {"flip": True, "crop_padding": 4},
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "lr_step_epochs": args.lr_step_epochs,
                    "warmup_epochs": args.warmup_epochs,
                    "seed": args.seed,
                    "device": args.device,
                    "out": str(runs / name),
                },
                source="benchmark options",
            )
            t0 = time.perf_counter()
            try:
                result = train(cfg, progress=args.progress)
            except UserError as exc:
                sys.exit(f"error: {exc}")
            seconds = time.perf_counter() - t0
            rates = [r["images_per_s"] for r in result.history]
            rows.append(
                {
                    "model": name,
                    "width": args.width,
                    "n_train": args.n_train,
                    "n_test": args.n_test,
                    "epochs": args.epochs,
                    "test_acc": round(result.test_acc, 4),  # the chosen epoch, measured once
                    "best_val_acc": round(result.best_acc, 4),
                    "last_val_acc": round(result.final_acc, 4),
                    "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else float("nan"),
                    "seconds": round(seconds, 1),
                }
            )

    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
