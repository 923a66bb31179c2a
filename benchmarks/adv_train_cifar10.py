"""Adversarial training on CIFAR-10 at CPU scale, measured against its threat model (issue 21).

A benchmark script, not a test. It unpacks ``../shared/data/cifar10-jpeg`` once (as train_cifar10.py
does), trains each model with the training threat model (default ``fgsm-rs`` at Linf 8/255, Wong et
al.'s one-cycle schedule) and, with ``--standard``, the same recipe without it; then evaluates every
chosen checkpoint with the sweep engine on the first ``--n-eval`` test images: clean accuracy, PGD-50
and the authors' AutoAttack (standard) at 8/255. Both stages resume: training from each run folder,
the sweep from its results folder, so an interrupted script picks up where it stopped::

    python benchmarks/adv_train_cifar10.py --out runs/adv --models vgg16 --threads 1
    python benchmarks/adv_train_cifar10.py --out runs/adv --models vgg16 --standard --epochs 8

It prints one table (and ``--csv``) with the CPU, the precision and every wall-clock figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import default_cache_dir, unpack  # noqa: E402

from robustbench_lta import run_sweep  # noqa: E402
from robustbench_lta.config import TrainConfig, validate  # noqa: E402
from robustbench_lta.data.registry import shared_data_dir  # noqa: E402
from robustbench_lta.training.trainer import train  # noqa: E402

EPS = 8 / 255


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
        isa = [f for f in ("amx_bf16", "avx512_bf16") if f in flags.split()]
        return f"{name} ({', '.join(isa) or 'no bf16 ISA'}), {torch.get_num_threads()} threads"
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def run_tag(args: argparse.Namespace, name: str, adversarial: bool) -> str:
    if not adversarial:
        return f"{name}_standard"
    return f"{name}_{args.method}" + ("_margin" if args.loss == "margin" else "")


def train_one(args: argparse.Namespace, root: Path, name: str, adversarial: bool) -> dict:
    tag = run_tag(args, name, adversarial)
    cfg = validate(TrainConfig, {
        "model": {"name": name, "width": args.width},
        "data": {"name": f"imagefolder:{root}", "n_train": args.n_train},
        "augment": {"flip": True, "crop_padding": 4},
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": "onecycle",
        "momentum": 0.9, "weight_decay": 5e-4, "seed": args.seed, "device": "cpu", "amp": args.amp,
        "val_fraction": args.val_fraction, "out": str(args.out / tag),
        "adversarial": {"method": args.method if adversarial else "none", "eps": args.eps,
                        "steps": args.steps, "step_size": args.step_size,
                        **({"loss": args.loss} if adversarial else {}),
                        "eval_every": 1, "eval_n": args.n_val_robust, "eval_steps": 10},
    }, source="benchmark options")
    t0 = time.perf_counter()
    result = train(cfg, progress=args.progress)
    card = json.loads(result.best_path.with_suffix(".json").read_text())
    train_s = sum(float(r["seconds"]) for r in result.history)
    return {"tag": tag, "model": name, "threat": cfg.adversarial.label(), "epochs": len(result.history),
            "best_epoch": result.best_epoch, "train_wall_s": round(train_s, 1),
            "this_call_s": round(time.perf_counter() - t0, 1), "precision": card.get("precision"),
            "amp": card.get("amp"), "val_clean": card.get("clean_val_accuracy"),
            "val_robust": card["selection"].get("robust_val_accuracy"),
            "collapsed_epochs": result.collapsed_epochs, "checkpoint": str(result.best_path)}


def _row_from_folder(tag: str, folder: Path) -> dict:
    """The table row of a run trained earlier (its card and history.csv)."""
    card = json.loads((folder / "best.json").read_text())
    history = list(csv.DictReader((folder / "history.csv").open()))
    threat = (card.get("threat_model") or {}).get("label", "standard (no adversarial training)")
    return {"tag": tag, "model": card["model"]["name"], "threat": threat, "epochs": len(history),
            "best_epoch": card["selection"].get("epoch"),
            "train_wall_s": round(sum(float(r["seconds"]) for r in history), 1),
            "precision": card.get("precision"), "amp": card.get("amp"),
            "val_clean": card.get("clean_val_accuracy"),
            "val_robust": card["selection"].get("robust_val_accuracy"),
            "collapsed_epochs": (card.get("catastrophic_overfitting") or {}).get("epochs", []),
            "checkpoint": str(folder / "best.safetensors")}


def evaluate(args: argparse.Namespace, root: Path, rows: list[dict]) -> None:
    from robustbench_lta.data.registry import load_dataset

    test = load_dataset(f"imagefolder:{root}", split="test", n=args.n_eval)
    models = {r["tag"]: r["checkpoint"] for r in rows}
    t0 = time.perf_counter()
    attacks = [{"name": "pgd-linf", "params": {"steps": 50}, "label": "pgd50"}]
    if not args.no_autoattack:
        attacks.append("autoattack")
    summary = run_sweep(models, attacks, [EPS], data=test, n=args.n_eval, batch_size=250, seed=0,
                        out=args.out / "sweep", progress=args.progress, accounting="per-attack")
    eval_s = time.perf_counter() - t0
    for r in rows:
        mine = summary[summary["model"] == r["tag"]]
        r["clean_acc"] = round(float(mine["clean_acc"].iloc[0]), 4)
        for attack in ("pgd50", "autoattack"):
            hit = mine[mine["attack"] == attack]
            r[f"{attack}_acc"] = round(float(hit["robust_acc"].iloc[0]), 4) if len(hit) else None
            r[f"{attack}_status"] = str(hit["status"].iloc[0]) if len(hit) else None
        r["eval_wall_s_all_models"] = round(eval_s, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["vgg16"], help="models to train (none: only --also)")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--method", default="fgsm-rs", choices=["fgsm-rs", "n-fgsm", "pgd", "trades"])
    p.add_argument("--steps", type=int, default=10, help="attack steps per batch (pgd, trades)")
    p.add_argument("--step-size", type=float, default=None,
                   help="/255 units (default: pgd and trades 0.25 eps, fgsm-rs 1.25 eps, n-fgsm eps)")
    p.add_argument("--eps", type=float, default=8.0, help="training budget in /255 units")
    p.add_argument("--loss", default="ce", choices=["ce", "margin"],
                   help="the loss the training examples ascend (pgd, fgsm-rs, n-fgsm)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-train", type=int, default=None, help="first N training images (default all 50,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="one-cycle peak learning rate")
    p.add_argument("--amp", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--n-val-robust", type=int, default=500)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--standard", action="store_true", help="also train each model without the threat model")
    p.add_argument("--only-standard", action="store_true", help="train only without the threat model")
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=CHECKPOINT",
                   help="another trained checkpoint to evaluate beside this run's (repeatable)")
    p.add_argument("--no-train", action="store_true", help="evaluate the runs already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shared", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True, help="run folders and the sweep (resumable)")
    p.add_argument("--csv", type=Path, default=None)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    shared = args.shared or shared_data_dir()
    if shared is None or not shared.is_dir():
        sys.exit("error: no ../shared/data/cifar10-jpeg beside the repository: pass --shared FOLDER")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = unpack(shared, default_cache_dir())
    rows = []
    for name in args.models:
        for adversarial in ([False] if args.only_standard else [True, False] if args.standard else [True]):
            if args.no_train:
                tag = run_tag(args, name, adversarial)
                rows.append(_row_from_folder(tag, args.out / tag))
            else:
                rows.append(train_one(args, root, name, adversarial))
            print(json.dumps(rows[-1]), flush=True)
    for extra in args.also:
        label, _, path = extra.partition("=")
        rows.append(_row_from_folder(label, Path(path)))
    if not args.no_eval:
        evaluate(args, root, rows)
    print(f"\nCPU: {cpu_name()}; CIFAR-10 (JPEG copy), width {args.width}, batch {args.batch_size}, "
          f"one-cycle lr {args.lr}, eval on the first {args.n_eval} test images at 8/255")
    cols = ["tag", "threat", "epochs", "best_epoch", "precision", "train_wall_s", "clean_acc", "pgd50_acc",
            "autoattack_acc", "collapsed_epochs"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
