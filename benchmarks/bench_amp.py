"""Sweeps under bf16 autocast vs float32: speed and robust accuracy of every built-in attack.

A benchmark script, not a test (issue "Speed v3"). On one checkpoint and the first ``--n`` CIFAR-10 test
images of ``../shared``, each built-in attack runs as a one-attack sweep (``run_sweep``, defaults except
model-pass extras off, so each figure is the attack's own) twice: ``amp="off"`` (float32) and
``amp="bf16"`` (the attack's gradients under ``torch.autocast(dtype=torch.bfloat16)``; predictions and
verification stay float32 in both). Order alternates per attack so background load hits both alike.
Prints, per attack: seconds each, the speed ratio float32 / bf16, robust accuracy each at
``--eps-linf``/255 or ``--eps-l2`` (minimal-norm attacks run unbounded: no example found at all; their
median norm too), and how many samples' adversarial prediction differs; then the largest robust-accuracy
difference.

    python benchmarks/bench_amp.py runs/adv125/vgg16_fgsm-rs/best.safetensors --n 128

``amp: bf16`` is honoured even where bf16 is emulated (``devices.amp_dtype``): name the CPU beside the
figures (the machine lines printed first say which flags it has).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import load_avg, print_machine  # noqa: E402
from train_cifar10 import cifar10_test  # noqa: E402

from robustbench_lta.engine.api import run_sweep  # noqa: E402
from robustbench_lta.plugins import get_attack_class, list_attacks  # noqa: E402
from robustbench_lta.training.checkpoint import load_model  # noqa: E402

#: slow at their defaults on a CPU: run with fewer queries / steps, named in the output
CHEAPER = {"square": "square:n_queries=500", "boundary": "boundary:steps=200"}


def one_sweep(model: torch.nn.Module, data, attack: str, eps: float, amp: str, workdir: Path
              ) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    out = Path(tempfile.mkdtemp(prefix="amp-", dir=workdir))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_sweep({"model": model}, [attack], [eps], data=data, n=len(data), batch_size=128,
                            device="cpu", seed=0, out=out, progress=False, amp=amp, sanity_samples=0,
                            attention_samples=0)
    seconds = time.perf_counter() - t0
    samples = pd.read_parquet(out / "samples.parquet")
    shutil.rmtree(out, ignore_errors=True)
    return seconds, summary, samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--eps-linf", type=float, default=8.0, help="Linf budget, /255")
    ap.add_argument("--eps-l2", type=float, default=0.5)
    ap.add_argument("--attacks", nargs="*", default=None, help="default: every built-in attack")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    print_machine(args.threads)
    names = args.attacks or [a.name for a in list_attacks() if a.source == "builtin"]
    model = load_model(args.checkpoint).eval()
    data = cifar10_test(args.n)
    workdir = Path(tempfile.mkdtemp(prefix="bench-amp-"))
    rows = []
    try:
        for i, name in enumerate(names):
            attack = CHEAPER.get(name, name)
            cls = get_attack_class(name)
            eps = args.eps_linf / 255 if cls.threat_model.value == "linf" else args.eps_l2
            order = ("off", "bf16") if i % 2 == 0 else ("bf16", "off")
            runs = {amp: one_sweep(model, data, attack, eps, amp, workdir) for amp in order}
            (t32, s32, p32), (t16, s16, p16) = runs["off"], runs["bf16"]
            key = ["index", "eps"]
            m = p32.merge(p16, on=key, suffixes=("_32", "_16"))
            differ = int((m["adv_pred_32"] != m["adv_pred_16"]).sum())
            a32, a16 = float(s32.iloc[-1]["robust_acc"]), float(s16.iloc[-1]["robust_acc"])
            figure = f"robust {a32:.1%} / {a16:.1%}"
            if s32.iloc[-1]["status"] != "ok":  # e.g. an attention attack on a model without attention
                print(f"  {attack:24s} not run: {s32.iloc[-1]['message']}", flush=True)
                continue
            diff = a16 - a32
            if not cls.bounded:  # minimal-norm attacks run unbounded: robust = no example found
                n32, n16 = float(s32.iloc[-1]["median_norm"]), float(s16.iloc[-1]["median_norm"])
                figure += f", median norm {n32:.4f} / {n16:.4f}"
            rows.append({"attack": attack, "fp32_s": t32, "bf16_s": t16, "speed": t32 / t16, "diff": diff,
                         "differ": differ})
            print(f"  {attack:24s} fp32 {t32:7.1f} s  bf16 {t16:7.1f} s  {t32 / t16:4.2f}x  {figure}  "
                  f"predictions differing {differ}/{len(m)}  (load {load_avg()})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = pd.DataFrame(rows)
    if len(table):
        worst = table.loc[table["diff"].abs().idxmax()]
        print(f"\nlargest robust-accuracy difference bf16 - fp32: {worst['diff'] * 100:+.1f} points "
              f"({worst['attack']}); speed ratios {table['speed'].min():.2f}x .. {table['speed'].max():.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
