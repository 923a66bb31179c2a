"""Work the engine does vs the floor its accounting needs, and wall time vs torchattacks per budget.

Counting images through forward and backward passes (the engine's work counters, summary columns
``forward``/``backward``) is exact and repeatable on a noisy machine; wall time is quoted beside it,
each ratio measured within this one run.

The model: a SmallCNN trained by this script on 20,000 CIFAR-10 training images from
``../shared/data/cifar10-jpeg`` for 8 epochs (cached under ``runs/bench_work_cifar10_20k``; 6.5 min
on 2 cores, 78 % on 500 test images: a model that FGSM breaks the way it breaks real ones, most samples
within the first budgets; an under-trained smooth model keeps many survivors and understates what
survivors-only evaluation saves), evaluated on the first ``--n`` test images with
``run_sweep``'s default settings (worst-case accounting, sanity checks on).

The floor, per attack (images through the model; a forward+backward pass counts in both columns):
- clean pass: ``n`` forwards;
- gradient passes: one-shot attacks (FGSM) one forward+backward per clean-correct sample for all
  budgets together; iterative attacks ``steps`` per sample attacked at each budget (PGD stops on the
  samples it has broken, so it can land below this bound);
- verification: one forward per sample still unbroken at each budget (worst case) - the samples
  broken at a smaller budget carry their adversarial example and are not evaluated again.

    python benchmarks/bench_work.py                     # n=512, all attacks
    python benchmarks/bench_work.py --n 128 --attacks fgsm
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import default_cache_dir, unpack  # noqa: E402

from robustbench_lta.config import TrainConfig, validate  # noqa: E402
from robustbench_lta.data.registry import load_dataset, shared_data_dir  # noqa: E402
from robustbench_lta.engine.api import run_sweep  # noqa: E402
from robustbench_lta.training.checkpoint import load_model  # noqa: E402
from robustbench_lta.training.trainer import train  # noqa: E402

FGSM_EPS = [k / 255 for k in range(1, 9)]
PGD_EPS = [2 / 255, 4 / 255, 6 / 255, 8 / 255]
AA_EPS = [1 / 255, 2 / 255, 4 / 255]
PGD_STEPS = 10


def trained_model(cifar: Path) -> torch.nn.Module:
    cfg = validate(
        TrainConfig,
        {
            "model": {"name": "smallcnn", "width": 1.0},
            "data": {"name": f"imagefolder:{cifar}", "n_train": 20000, "n_test": 500},
            "epochs": 8,
            "batch_size": 64,
            "lr": 0.05,
            "lr_step_epochs": 3,
            "warmup_epochs": 1,
            "seed": 0,
            "device": "cpu",
            "out": "runs/bench_work_cifar10_20k",
        },
        "bench_work training",
    )
    if not (Path(cfg.out) / "last.json").is_file():
        print(f"training smallcnn on CIFAR-10 into {cfg.out} (cached for later runs) ...", flush=True)
    train(cfg, progress=False)
    return load_model(Path(cfg.out)).eval()


def floor_and_counts(
    summary: pd.DataFrame, samples: pd.DataFrame, attack: str, steps: int | None
) -> dict[str, float]:
    rows = summary[summary["attack"] == attack]
    s = samples[samples["attack"] == attack]
    eps = sorted(s["eps"].unique())
    n = int(len(s[s["eps"] == eps[0]]))
    first = s[s["eps"] == eps[0]]
    correct = int((first["clean_pred"] == first["label"]).sum())
    attacked = [int(s[(s["eps"] == e) & s["attacked"]].shape[0]) for e in eps]
    if steps is None:  # one-shot multi-budget: one gradient for every budget
        grad = correct
    else:
        grad = steps * sum(attacked)
    fwd_floor = n + grad + sum(attacked)
    bwd_floor = grad
    fwd, bwd = int(rows["forward"].sum()), int(rows["backward"].sum())
    return {
        "n": n,
        "correct": correct,
        "forward": fwd,
        "backward": bwd,
        "floor_forward": fwd_floor,
        "floor_backward": bwd_floor,
        "ratio": (fwd + bwd) / max(1, fwd_floor + bwd_floor),
        "seconds": float(rows["seconds"].sum()),
    }


def torchattacks_per_budget(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: list[float], bs: int
) -> tuple[float, np.ndarray]:
    import torchattacks

    t0 = time.perf_counter()
    preds = np.zeros((len(eps), len(x)), dtype=np.int64)
    for k, e in enumerate(eps):
        if attack == "fgsm":
            atk = torchattacks.FGSM(model, eps=e)
        elif attack == "pgd-linf":
            atk = torchattacks.PGD(
                model, eps=e, alpha=2.5 * e / PGD_STEPS, steps=PGD_STEPS, random_start=True
            )
        else:
            atk = torchattacks.AutoAttack(model, eps=e, n_classes=10, seed=0)
        for s in range(0, len(x), bs):
            adv = atk(x[s : s + bs], y[s : s + bs])
            with torch.inference_mode():
                preds[k, s : s + bs] = model(adv).argmax(1).numpy()
    return time.perf_counter() - t0, preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--n-aa", type=int, default=64, help="images for AutoAttack (slow)")
    ap.add_argument("--attacks", nargs="*", default=["fgsm", "pgd-linf", "deepfool", "autoattack"])
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    shared = shared_data_dir()
    if shared is None:
        sys.exit("error: ../shared/data/cifar10-jpeg not found (set ROBUSTBENCH_LTA_SHARED)")
    cifar = unpack(shared, default_cache_dir())
    model = trained_model(cifar / "train")
    ds = load_dataset(f"imagefolder:{cifar / 'test'}", split="test", n=args.n)
    x, y = ds.images.float() / 255, ds.labels
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
        f"n={args.n}",
        flush=True,
    )
    table = []
    for attack in args.attacks:
        eps = {"fgsm": FGSM_EPS, "pgd-linf": PGD_EPS, "deepfool": [8 / 255], "autoattack": AA_EPS}[attack]
        n = args.n_aa if attack == "autoattack" else args.n
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            summary = run_sweep(
                {"cnn": model},
                [attack],
                eps,
                data=(x[:n], y[:n]),
                n=n,
                batch_size=args.batch_size,
                out=tmp,
                progress=False,
            )
            wall = time.perf_counter() - t0
            samples = pd.read_parquet(Path(tmp) / "samples.parquet")
        steps = None if attack == "fgsm" else PGD_STEPS
        r = floor_and_counts(summary, samples, attack, steps)
        if attack not in ("fgsm", "pgd-linf"):  # no step count to bound them by: work per attacked image
            r["ratio"] = float("nan")
            r["floor_forward"] = r["floor_backward"] = "n/a"
        line = {
            "attack": attack,
            "budgets": len(eps) if attack != "deepfool" else "unbounded",
            **r,
            "wall_s": wall,
        }
        if attack in ("fgsm", "pgd-linf") or (attack == "autoattack" and n <= 64):
            ta_s, ta_preds = torchattacks_per_budget(model, x[:n], y[:n], attack, eps, args.batch_size)
            line["torchattacks_s"] = ta_s
            line["speedup_vs_torchattacks"] = ta_s / wall
            wc = summary[(summary["attack"] == "worst-case")]
            if len(wc):
                mine = float(wc["robust_acc"].iloc[-1])
                theirs = float(np.logical_and.reduce([p == y[:n].numpy() for p in ta_preds]).mean())
                line["robust_acc_engine"], line["robust_acc_torchattacks"] = mine, theirs
        table.append(line)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in line.items()}, flush=True)
    print(
        "\n| attack | budgets | n | counted fwd | counted bwd | floor fwd | floor bwd | work/floor | "
        "engine s | torchattacks s | speed-up |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in table:
        print(
            f"| {r['attack']} | {r['budgets']} | {r['n']} | {r['forward']} | {r['backward']} | "
            f"{r['floor_forward']} | {r['floor_backward']} | {r['ratio']:.2f} | {r['wall_s']:.1f} | "
            f"{r.get('torchattacks_s', float('nan')):.1f} | "
            f"{r.get('speedup_vs_torchattacks', float('nan')):.1f}x |"
        )


if __name__ == "__main__":
    main()
