"""Localisation vs saliency on cluttered-digits: pointing game and top-k IoU with the digit's box.

Runs :func:`robustbench_lta.analysis.localisation.localisation_table` on trained checkpoints (an
attention model and its matched baseline, or any others) over the first ``--n`` test images,
clean and under FGSM at each ``--eps`` (pixel units), and prints / writes the table::

    python benchmarks/localisation.py att=runs/att/best.safetensors base=runs/base/best.safetensors \\
        --n 500 --eps 2,8 --out results/localisation.csv

A family folder (``train --seeds``) may be given; every seed run is scored (labels NAME@seed<S>).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from robustbench_lta.analysis.localisation import localisation_table
from robustbench_lta.data.registry import load_dataset
from robustbench_lta.errors import UserError
from robustbench_lta.training.checkpoint import load_model, read_card
from robustbench_lta.training.family import expand_model_specs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="LABEL=CHECKPOINT (or a family folder)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eps", default="2,8", help="FGSM budgets in /255, comma-separated")
    ap.add_argument("--top-fraction", type=float, default=0.2)
    ap.add_argument("--smoothgrad-samples", type=int, default=16)
    ap.add_argument("--out", default=None, help="CSV to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    specs = []
    for item in args.models:
        label, _, path = item.partition("=")
        specs.append({"name": label, "source": path} if path else {"source": label})
    models = {}
    try:
        for spec in expand_model_specs(specs):
            models[spec.get("name") or Path(spec["source"]).stem] = load_model(spec["source"]).eval()
        card = read_card(expand_model_specs(specs)[0]["source"])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = (card.get("dataset") or {}).get("name", "cluttered-digits")
    ds = load_dataset(data, split="test", n=args.n)
    if getattr(ds, "boxes", None) is None:
        print(f"error: dataset {data!r} has no object boxes: use cluttered-digits", file=sys.stderr)
        return 2
    x, y = ds.images[: args.n].float() / 255, ds.labels[: args.n]
    eps = [float(e) / 255 for e in args.eps.split(",") if e.strip()]
    t0 = time.perf_counter()
    table = localisation_table(models, x, y, ds.boxes[: args.n].float(), fgsm_eps=eps,
                               top_fraction=args.top_fraction, smoothgrad_samples=args.smoothgrad_samples)
    print(table.round(3).to_string(index=False))
    print(f"{len(models)} models x {len(x)} images in {time.perf_counter() - t0:.1f} s "
          f"(top_fraction {args.top_fraction}, SmoothGrad {args.smoothgrad_samples} samples, sigma 0.15)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
