"""Peak memory of a sweep as the dataset grows: it must be bounded by a shard, not by the dataset.

Two measurements, each sweep in a fresh subprocess that reports its own peak RSS (``ru_maxrss``):

1. a synthetic ImageFolder of 224x224 JPEGs (generated here, once, under ``--cache``) swept through
   a small CNN with FGSM at 2 budgets, at 5,000 and 20,000 images (``--sizes``);
2. CIFAR-10 test images from ``../shared`` (``imagefolder:``), FGSM + PGD-5 at 4 budgets, at 1,000
   and 10,000 images.

    python benchmarks/bench_streaming.py
    python benchmarks/bench_streaming.py --sizes 500 2000 --cifar 200 1000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 4


def tiny_cnn(classes: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    ).eval()


def make_folder(root: Path, n: int, size: int = 224) -> Path:
    """``n`` smooth random JPEGs (cheap to encode, ~10 KB each) in ``CLASSES`` class folders."""
    from PIL import Image

    marker = root / f".done-{n}-{size}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t0 = time.perf_counter()
    for i in range(n):
        d = root / f"class{i % CLASSES}"
        d.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.random(3)
        img = np.stack([np.sin(6 * a * xx + 3 * b * yy), np.cos(5 * b * xx * yy + c), xx * a + yy * c], -1)
        img = ((img - img.min()) / (np.ptp(img) + 1e-9) * 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=85)
    marker.touch()
    print(f"  generated {n} JPEGs of {size}x{size} in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def child(kind: str, folder: str, n: int) -> dict:
    import warnings

    import torch

    from robustbench_lta.engine.api import run_sweep

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        if kind == "synthetic":
            summary = run_sweep(
                {"tiny": tiny_cnn(CLASSES)},
                ["fgsm"],
                [1 / 255, 2 / 255],
                data=f"imagefolder:{folder}",
                n=n,
                batch_size=128,
                out=out,
                progress=False,
            )
        else:
            summary = run_sweep(
                {"tiny": tiny_cnn(10)},
                ["fgsm", {"name": "pgd-linf", "params": {"steps": 5}}],
                [1 / 255, 2 / 255, 4 / 255, 8 / 255],
                data=f"imagefolder:{folder}",
                n=n,
                batch_size=256,
                out=out,
                progress=False,
            )
        seconds = time.perf_counter() - t0
    assert (summary["status"] == "ok").all(), summary["message"].tolist()
    return {
        "kind": kind,
        "n": n,
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(kind: str, folder: Path, n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(folder), str(n)], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{kind} n={n} failed: {out.stderr.strip()[-1500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {kind:9s} n={n:6d}: {r['seconds']:7.1f} s ({1000 * r['seconds'] / n:.1f} ms/image), "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[5000, 20000])
    ap.add_argument("--cifar", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rblta-bench-streaming"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    rows = []
    if args.sizes:
        folder = make_folder(Path(args.cache) / "synthetic224", max(args.sizes))
        rows += [measure("synthetic", folder, n) for n in args.sizes]
    if args.cifar:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_cifar10 import default_cache_dir, unpack

        from robustbench_lta.data.registry import shared_data_dir

        shared = shared_data_dir()
        if shared is None:
            print("  (no ../shared CIFAR-10: CIFAR rows skipped)")
        else:
            test = unpack(shared, default_cache_dir()) / "test"
            rows += [measure("cifar10", test, n) for n in args.cifar]
    print("\n| data | images | seconds | ms/image | peak RSS (MiB) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['n']:,} | {r['seconds']:.1f} | {1000 * r['seconds'] / r['n']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
