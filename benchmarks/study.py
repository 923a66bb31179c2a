"""Study v2: vgg16, its compute-matched baseline and the att2/att3 attention VGGs, several seeds each.

A benchmark script, not a test. Stages (each timed; ``--stages`` picks some):

1. ``train``: every model as a seed family (training/family.py) on CIFAR-10 (JPEG copy from
   ``../shared``, unpacked once like benchmarks/train_cifar10.py) at ``--width``, ``--n-train``
   images, ``--epochs``; runs in ``<runs>/<model>/seed<S>``.
2. ``sweep``: the families (labels ``model@seed<S>``) x FGSM over the eps grid (the paper's
   protocol), PGD with each of ``--pgd-steps`` (a comma list: ``10,50``), APGD-CE (AutoAttack's
   first component, a port), Square (``--square-queries``) at the largest eps, the authors'
   AutoAttack at ``--autoattack-eps`` (none by default: CPU-costly), ``pgd-attn-js`` and
   ``attn-hijack`` with the first PGD step count (they fail cleanly on models without attention),
   worst-case accounting, first ``--n`` test images.
3. ``report``: the PDF report, plus ``study_family_curves.csv`` (seed spread) and
   ``study_family_intervals.csv`` (two-level bootstrap: seeds, then samples; each family minus the
   first family without attention) and ``study_compute.csv`` (GMACs per model) in the results folder.
4. ``localisation``: ``vgg16_att3_concat_pc`` and ``vgg16_matched`` trained on cluttered-digits (one
   seed), pointing game and top-20 % IoU of attention vs gradient saliency vs SmoothGrad, clean and
   under FGSM (analysis/localisation.py); ``study_localisation.csv``.

Example (the CPU scale of docs/study.md)::

    python benchmarks/study.py --width 0.0625 --n-train 4000 --n-test 1000 --epochs 6 --n 200 \
        --pgd-steps 10,50 --apgd-steps 10 --square-queries 100 --autoattack-eps 8

Timings are wall-clock on whatever machine runs it; ``study_timings.json`` records them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_MODELS = ("vgg16", "vgg16_matched", "vgg16_att2_concat_pc", "vgg16_att3_concat_pc")


def _train_families(args: argparse.Namespace, data_name: str) -> dict[str, float]:
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.training.family import train_family

    seconds = {}
    for name in args.models:
        cfg = validate(TrainConfig, {
            "model": {"name": name, "width": args.width},
            "data": {"name": data_name, "n_train": args.n_train, "n_test": args.n_test},
            "augment": {"flip": True, "crop_padding": 4}, "epochs": args.epochs, "batch_size": 64,
            "lr": 0.05, "lr_step_epochs": max(1, args.epochs // 2),
            "warmup_epochs": 1 if args.epochs > 2 else 0,
            "seeds": args.seeds, "device": args.device, "out": str(args.runs / name)}, "study options")
        t0 = time.perf_counter()
        fam = train_family(cfg, progress=False)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"  {name}: best test accuracy {', '.join(f'{a:.1%}' for a in fam.best_accs)} "
              f"({seconds[name]:.0f} s)", flush=True)
    return seconds


def _sweep(args: argparse.Namespace) -> None:
    from robustbench_lta.config import SweepConfig, validate
    from robustbench_lta.engine.executors import run_with_executor
    from robustbench_lta.training.family import expand_model_specs

    pgd = [{"name": "pgd-linf", "label": f"pgd{k}", "params": {"steps": k}} for k in args.pgd_steps]
    aa = [{"name": "autoattack", "eps": args.autoattack_eps}] if args.autoattack_eps else []
    steps = args.pgd_steps[0]  # the attention attacks match the first PGD: "never weaker" is per steps
    raw = {
        "models": expand_model_specs([{"source": str(args.runs / m), "name": m} for m in args.models]),
        "attacks": [
            {"name": "fgsm"},
            *pgd,
            {"name": "apgd-ce", "params": {"steps": args.apgd_steps}},
            {"name": "square", "params": {"n_queries": args.square_queries}, "eps": [args.eps[-1]]},
            *aa,
            {"name": "pgd-attn-js", "params": {"steps": steps}},
            {"name": "attn-hijack", "params": {"steps": steps}},
        ],
        "eps": args.eps, "eps_scale": 255, "n": args.n, "batch_size": 100, "seed": 0,
        "accounting": "worst-case", "device": args.device, "out": str(args.results),
    }
    run_with_executor(validate(SweepConfig, raw, "study sweep"), progress=False)


def _report(args: argparse.Namespace) -> None:
    import pandas as pd

    from robustbench_lta.models.compute import registry_gmacs
    from robustbench_lta.reporting.family import family_curves, family_intervals
    from robustbench_lta.reporting.load import load_results
    from robustbench_lta.reporting.pdf import build_report

    report = build_report([args.results], args.report,
                          title="Study v2: attention VGG vs baselines, seed families")
    bundle = load_results([args.results])
    family_curves(bundle).to_csv(args.results / "study_family_curves.csv", index=False)
    # the report's own bootstrap table (1,000 replicates): the same figures as its family page
    intervals = report.family_intervals if report.family_intervals is not None else family_intervals(bundle)
    intervals.to_csv(args.results / "study_family_intervals.csv", index=False)
    pd.DataFrame([{"model": m, "width": args.width, "gmacs_32x32": registry_gmacs(m, args.width),
                   "gmacs_32x32_width1": registry_gmacs(m)} for m in args.models]).to_csv(
        args.results / "study_compute.csv", index=False)


def _localisation(args: argparse.Namespace) -> None:
    from robustbench_lta.analysis.localisation import localisation_table
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.data.registry import load_dataset
    from robustbench_lta.training.checkpoint import load_model
    from robustbench_lta.training.trainer import train

    models = {}
    for name in ("vgg16_att3_concat_pc", "vgg16_matched"):
        cfg = validate(TrainConfig, {
            "model": {"name": name, "width": args.width},
            "data": {"name": "cluttered-digits", "n_train": args.n_train, "n_test": 500},
            "augment": {"flip": False, "crop_padding": 0}, "epochs": args.epochs, "batch_size": 64,
            "lr": 0.05, "lr_step_epochs": max(1, args.epochs // 2), "device": args.device,
            "out": str(args.runs / "digits" / name)}, "study options")
        models[name] = load_model(train(cfg, progress=False).best_path).eval()
    ds = load_dataset("cluttered-digits", split="test", n=args.n)
    table = localisation_table(models, ds.images.float() / 255, ds.labels, ds.boxes.float(),
                               fgsm_eps=[2 / 255, 8 / 255], smoothgrad_samples=8)
    print(table.round(3).to_string(index=False))
    table.to_csv(args.results / "study_localisation.csv", index=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="train,sweep,report,localisation")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=200, help="test images attacked")
    p.add_argument("--eps", default="0,1,2,4,8", help="pixel units (/255)")
    p.add_argument("--pgd-steps", default="50", help="PGD step counts, comma-separated (one cell each)")
    p.add_argument("--autoattack-eps", default="", help="budgets (/255) for the authors' AutoAttack")
    p.add_argument("--apgd-steps", type=int, default=50)
    p.add_argument("--square-queries", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", type=Path, default=Path("runs/study"))
    p.add_argument("--results", type=Path, default=Path("results/study"))
    p.add_argument("--report", type=Path, default=Path("reports/study.pdf"))
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.eps = [float(e) for e in args.eps.split(",") if e.strip()]
    args.pgd_steps = [int(k) for k in args.pgd_steps.split(",") if k.strip()]
    args.autoattack_eps = [float(e) for e in args.autoattack_eps.split(",") if e.strip()]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.results.mkdir(parents=True, exist_ok=True)
    timings_path = args.results / "study_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for stage in stages:
        t0 = time.perf_counter()
        print(f"== {stage}", flush=True)
        if stage == "train":
            from train_cifar10 import default_cache_dir, unpack

            from robustbench_lta.data.registry import shared_data_dir

            shared = shared_data_dir()
            if shared is None:
                sys.exit("error: ../shared/data/cifar10-jpeg is absent: the study needs the CIFAR-10 JPEGs")
            root = unpack(shared, default_cache_dir())
            timings["train_per_model_s"] = _train_families(args, f"imagefolder:{root}")
        elif stage == "sweep":
            _sweep(args)
        elif stage == "report":
            _report(args)
        elif stage == "localisation":
            _localisation(args)
        else:
            sys.exit(f"error: unknown stage {stage!r} (train, sweep, report, localisation)")
        timings[f"{stage}_s"] = round(time.perf_counter() - t0, 1)
        timings["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        timings_path.write_text(json.dumps(timings, indent=1))
        print(f"   {stage}: {timings[f'{stage}_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
