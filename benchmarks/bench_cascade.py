"""Cascade vs full accounting on a trained model: same worst case, how much faster (issue 23).

A benchmark script, not a test. Runs FGSM + PGD-10 + the authors' AutoAttack (standard) at 1, 2, 4
and 8/255 on the first ``--n`` test images of each checkpoint twice, into fresh folders: once with
``accounting: worst-case`` (every attack on every clean-correct sample still robust at the smaller
budget) and once with ``accounting: cascade`` (at each budget AutoAttack only on what PGD left, PGD
only on what FGSM left). Prints wall and CPU seconds of each, their ratio, and the worst-case
robust accuracy of both with the number of samples whose worst-case verdict differs::

    python benchmarks/bench_cascade.py --checkpoint runs/adv/vgg16_standard/best.safetensors \\
        --checkpoint runs/adv/vgg16_fgsm-rs/best.safetensors --n 128

PGD-10 starts at a random point and AutoAttack draws per batch: in the cascade they see other
batches, so a few samples may differ; the table counts them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adv_train_cifar10 import cpu_name  # noqa: E402
from train_cifar10 import cifar10_test  # noqa: E402

from robustbench_lta import run_sweep  # noqa: E402

EPS = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
ATTACKS = [{"name": "fgsm"}, {"name": "pgd-linf", "label": "pgd10", "params": {"steps": 10}},
           {"name": "autoattack"}]


def run(ckpt: Path, data, n: int, accounting: str, out: Path) -> tuple[float, float, pd.DataFrame]:
    t0, c0 = time.perf_counter(), time.process_time()
    summary = run_sweep({"m": str(ckpt)}, ATTACKS, EPS, data=data, n=n, out=out, progress=False,
                        batch_size=128, seed=0, accounting=accounting)
    return time.perf_counter() - t0, time.process_time() - c0, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", type=Path, required=True)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = cifar10_test(args.n)
    print(f"CPU: {cpu_name()}; first {args.n} CIFAR-10 test images; FGSM + PGD-10 + AutoAttack at "
          "1, 2, 4, 8/255")
    print("| checkpoint | mode | wall s | CPU s | worst case at 1/2/4/8 (%) | differing verdicts |")
    print("|---|---|---|---|---|---|")
    for ckpt in args.checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            res = {mode: run(ckpt, data, args.n, mode, Path(tmp) / mode)
                   for mode in ("worst-case", "cascade")}
            samples = {m: pd.read_parquet(Path(tmp) / m / "samples.parquet") for m in res}
        broken = {m: s[s["eps"] > 0].groupby(["eps", "index"])["broken"].any() for m, s in samples.items()}
        differ = int((broken["worst-case"] != broken["cascade"].reindex(broken["worst-case"].index)).sum())
        for mode, (wall, cpu, summary) in res.items():
            wc = summary[(summary["attack"] == "worst-case") & (summary["eps"] > 0)].sort_values("eps")
            accs = "/".join(f"{100 * a:.1f}" for a in wc["robust_acc"])
            print(f"| {ckpt.parent.name} | {mode} | {wall:.1f} | {cpu:.1f} | {accs} | "
                  f"{differ if mode == 'cascade' else ''} |", flush=True)
        full, casc = res["worst-case"], res["cascade"]
        print(f"| {ckpt.parent.name} | speed-up | {full[0] / casc[0]:.2f}x | {full[1] / casc[1]:.2f}x | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
