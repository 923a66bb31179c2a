"""Study v3: the attention question on networks that learn, standard and adversarially trained.

A benchmark script, not a test. Six families, three seeds each (``--recipe`` sets the scale):

    vgg16, vgg16_matched, vgg16_att2_concat_pc, vgg16_att3_concat_pc        standard training
    vgg16_matched_at, vgg16_att3_concat_pc_at                               PGD-2 at Linf 8/255

Stages (``--stages``, each timed into ``<results>/study_timings.json``):

1. ``train``: one run per (family, seed), seed-major (every family's seed 0 first, so a study cut
   short still compares every family), into ``<runs>/<family>/seed<S>``. Each run resumes itself
   after its last finished epoch; a finished run is skipped. Per-run seconds come from the runs'
   ``history.csv`` (summed epoch times), so they add up across sittings.
2. ``sweep``: every finished run (label ``family@seed<S>``) on the first ``n`` test images: FGSM on
   the whole eps grid, PGD-50 and APGD-CE, the authors' AutoAttack at the recipe's budgets, Square
   at the largest budget, ``pgd-attn-js`` and ``attn-hijack`` (they fail cleanly, one line each, on
   models without attention), worst case. The results folder resumes unit by unit and grows when
   more runs have finished.
3. ``report``: the PDF report, ``study_family_curves.csv``, ``study_family_intervals.csv``,
   ``study_verdict.csv`` (attention minus its compute-matched baseline, two-level bootstrap
   intervals, Holm-corrected across the comparisons shown: reporting/family.py) and
   ``study_networks.csv`` (every network's test accuracy, selection and training seconds).

Recipes (``RECIPES``, in study_recipes.py): ``cpu`` (docs/study.md, 2 cores), ``gpu`` (one H200,
about 10 minutes, see ``make gpu-study``), ``rehearsal`` (a tiny CPU run of the GPU command, for CI).
Interrupt at any point (Ctrl-C or SIGTERM) and run the same command again::

    python benchmarks/study.py --recipe cpu --runs runs/study3 --results results/study3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_archive import (  # noqa: E402
    archive_run,
    keep_unfinished,
    network_dir,
    restore_unfinished,
    unfinished_dir,
)
from study_recipes import (  # noqa: E402
    ARCHIVES,
    COMPARISONS,
    FAMILIES,
    RECIPES,
    STUDY_FAMILIES,
    Family,
    Recipe,
)

from robustbench_lta.errors import UserError  # noqa: E402
from robustbench_lta.utils import atomic_write_json  # noqa: E402


# ------------------------------------------------------------------------------------------ train
def train_config(recipe: Recipe, family: Family, seed: int, data_name: str, runs: Path,
                 threads: int | None) -> object:
    from robustbench_lta.config import TrainConfig, validate

    epochs = family_epochs(recipe, family)
    adversarial = ({"method": recipe.adv_method, "norm": "linf", "eps": 8, "steps": recipe.adv_steps,
                    "step_size": recipe.adv_step_size, "eval_every": 1, "eval_n": 500,
                    "eval_steps": 10} if family.adversarial else {"method": "none"})
    return validate(TrainConfig, {
        "model": {"name": family.model, "width": recipe.width},
        "data": {"name": data_name, "n_train": recipe.n_train, "n_test": recipe.n_test},
        "augment": {"flip": True, "crop_padding": 4}, "epochs": epochs, "batch_size": recipe.batch_size,
        "lr": recipe.lr, "lr_schedule": "onecycle", "momentum": 0.9, "weight_decay": 5e-4,
        # label smoothing softens the clean loss only: adversarial training keeps plain cross-entropy
        "label_smoothing": 0.0 if family.adversarial else recipe.label_smoothing,
        "seed": seed, "family": family.label, "device": recipe.device, "amp": recipe.amp,
        "channels_last": True, "val_fraction": 0.02, "eval_every": 1, "threads": threads,
        "adversarial": adversarial, "out": str(runs / family.label / f"seed{seed}"),
    }, f"study recipe {recipe.name}")


def family_epochs(recipe: Recipe, family: Family) -> int:
    return (recipe.adv_epochs if family.adversarial else recipe.epochs) * family.epoch_factor


def run_seconds(run: Path, column: str = "seconds") -> float:
    """Training seconds of a run, summed over its epochs (adds up across interrupted sittings).

    ``column="cpu_seconds"``: the process's CPU time instead of the wall clock (all threads; not
    inflated by a pause or a busy machine; epochs from before the column existed count 0).
    """
    history = run / "history.csv"
    if not history.is_file():
        return 0.0
    with history.open() as fh:
        return sum(float(r.get(column) or 0) for r in csv.DictReader(fh))


def finished(run: Path, epochs: int) -> bool:
    card = run / "best.json"
    if not card.is_file():
        return False
    state = run / "trainer_state.json"
    if state.is_file():
        done = json.loads(state.read_text()).get("epoch", 0)
        return int(done) >= epochs and "clean_test_accuracy" in json.loads(card.read_text())
    return "clean_test_accuracy" in json.loads(card.read_text())


def network_path(args: argparse.Namespace, fam: Family, seed: int) -> Path:
    """Where a finished network is read from: the archive (study_archive.py) if there is one."""
    if args.archive is not None:
        return network_dir(args.archive, fam.label, seed)
    return args.runs / fam.label / f"seed{seed}"


def stage_train(recipe: Recipe, args: argparse.Namespace, data_name: str) -> dict[str, float]:
    from robustbench_lta.training.trainer import train

    units = [(fam, seed) for seed in recipe.seeds for fam in args.families]
    pending = []  # (position, family, seed, config, run folder, where it is kept, its unfinished copy)
    for i, (fam, seed) in enumerate(units, 1):
        cfg = train_config(recipe, fam, seed, data_name, args.runs, args.threads)
        run, kept = Path(cfg.out), network_path(args, fam, seed)
        held = unfinished_dir(args.archive, fam.label, seed) if args.archive is not None else None
        if finished(kept, cfg.epochs):
            continue
        if finished(run, cfg.epochs):  # trained before the archive had it
            if kept != run:
                print(f"  [{i}/{len(units)}] {fam.label} seed {seed}: archived in "
                      f"{archive_run(run, kept, held)}", flush=True)
            continue
        if held is not None and (epoch := restore_unfinished(held, run)):
            print(f"  [{i}/{len(units)}] {fam.label} seed {seed}: resumes after epoch {epoch} of "
                  f"{cfg.epochs}, from {held}", flush=True)
        pending.append((i, fam, seed, cfg, run, kept, held))
    # each run is archived as soon as it finishes (side by side: in its own process)
    after = [partial(archive_run, run, kept, held) if kept != run else None
             for *_, run, kept, held in pending]
    t0 = time.perf_counter()
    try:
        if args.jobs > 1 and len(pending) > 1:
            from robustbench_lta.training.concurrent import train_concurrently

            threads = args.threads or torch.get_num_threads()
            order = ", ".join(f"{f.label}@seed{s}" for _, f, s, *_ in pending)
            print(f"  {len(pending)} runs to train, {args.jobs} at once with {max(1, threads // args.jobs)} "
                  f"thread(s) each, in this order: {order}", flush=True)
            results = train_concurrently([p[3] for p in pending], threads, progress=args.progress, then=after,
                                         jobs=args.jobs)
        else:
            results = []
            for (i, fam, seed, cfg, *_), then in zip(pending, after, strict=True):
                print(f"  [{i}/{len(units)}] {fam.label} seed {seed}: {cfg.epochs} epochs", flush=True)
                results.append(train(cfg, progress=args.progress))
                if then is not None:
                    then()
    except KeyboardInterrupt:
        keep_stopped_runs(pending)
        raise
    for (i, fam, seed, *_, kept, _), res in zip(pending, results, strict=True):
        print(f"  [{i}/{len(units)}] {fam.label} seed {seed}: test accuracy {res.test_acc:.1%} "
              f"(epoch {res.best_epoch}){f', in {kept}' if args.archive is not None else ''}", flush=True)
    if pending:
        print(f"  {len(pending)} runs in {time.perf_counter() - t0:.0f} s this sitting", flush=True)
    return {f"{f.label}@seed{s}": {c: round(run_seconds(network_path(args, f, s), c), 1)
                                   for c in ("seconds", "cpu_seconds")}
            for s in recipe.seeds for f in args.families}


def keep_stopped_runs(pending: list[tuple]) -> None:
    """A sitting stopped: copy each unfinished run into the archive, for the next sitting's machine."""
    for i, fam, seed, cfg, run, _, held in pending:
        if held is None or finished(run, cfg.epochs):
            continue
        try:
            epoch = keep_unfinished(run, held)
        except UserError as exc:  # a save cut off: the kept copy (if any) stays as it was
            print(f"  [{i}] {fam.label} seed {seed}: not kept ({exc})", flush=True)
            continue
        if epoch:
            print(f"  [{i}] {fam.label} seed {seed}: stopped after epoch {epoch} of {cfg.epochs}, kept in "
                  f"{held} (commit it: the next sitting resumes from there)", flush=True)


def finished_runs(recipe: Recipe, args: argparse.Namespace) -> list[tuple[Family, int, Path]]:
    out = []
    for fam in args.families:
        for seed in recipe.seeds:
            run = network_path(args, fam, seed)
            if finished(run, family_epochs(recipe, fam)):
                out.append((fam, seed, run))
    return out


# ------------------------------------------------------------------------------------------ sweep
def sweep_config(recipe: Recipe, args: argparse.Namespace, data_name: str) -> object:
    from robustbench_lta.config import SweepConfig, validate

    runs = finished_runs(recipe, args)
    if not runs:
        sys.exit("error: no finished training run to sweep yet: run the train stage first")
    steps = {"steps": recipe.attack_steps}
    pgd_eps = list(recipe.pgd_eps)
    aa_params = {"attacks": list(recipe.autoattack_attacks)} if recipe.autoattack_attacks else {}
    attacks = [
        {"name": "fgsm"},
        {"name": "pgd-linf", "label": f"pgd{recipe.attack_steps}", "params": steps, "eps": pgd_eps},
        {"name": "apgd-ce", "params": {"steps": max(recipe.attack_steps, 2)}, "eps": pgd_eps},
        {"name": "pgd-attn-js", "params": steps, "eps": pgd_eps},
        {"name": "attn-hijack", "params": steps, "eps": pgd_eps},
        # the dearest white-box attack last of its cost class: it sees only what the others left
        *([{"name": "autoattack", "eps": list(recipe.autoattack_eps), "params": aa_params}]
          if recipe.autoattack_eps else []),
        {"name": "square", "params": {"n_queries": recipe.square_queries}, "eps": [recipe.eps[-1]]},
    ]
    return validate(SweepConfig, {
        "models": [{"source": str(run), "name": f"{fam.label}@seed{seed}"} for fam, seed, run in runs],
        "attacks": attacks, "eps": list(recipe.eps), "eps_scale": 255, "n": recipe.n,
        "data": {"name": data_name}, "batch_size": recipe.sweep_batch, "seed": 0,
        # cascade: at each budget FGSM, then PGD/APGD and the attention attacks, then Square and
        # AutoAttack, each on what the earlier left (the worst case is the full mode's; issue 23)
        "accounting": "cascade", "device": recipe.device, "amp": "off", "compile": recipe.compile,
        # the results folder is committed (study_archive.py): no per-sample explorer images (about
        # 1 MB per network, stored twice, for the HTML report only); the attention figure data stays
        "explorer_samples": 0,
        "threads": args.threads, "out": str(args.results),
    }, f"study recipe {recipe.name}")


def stage_sweep(recipe: Recipe, args: argparse.Namespace, data_name: str) -> None:
    from robustbench_lta.engine.executors import run_with_executor

    run_with_executor(sweep_config(recipe, args, data_name), progress=args.progress)


# ----------------------------------------------------------------------------------------- report
def stage_report(recipe: Recipe, args: argparse.Namespace) -> None:
    from robustbench_lta.reporting.family import family_comparisons, family_curves
    from robustbench_lta.reporting.load import load_results
    from robustbench_lta.reporting.pdf import build_report

    report = build_report([args.results], args.report, force=True,
                          title=f"Study v3 ({recipe.name} recipe): attention VGG vs matched baselines")
    bundle = load_results([args.results])
    family_curves(bundle).to_csv(args.results / "study_family_curves.csv", index=False)
    if report.family_intervals is not None:
        report.family_intervals.to_csv(args.results / "study_family_intervals.csv", index=False)
    verdict = family_comparisons(bundle, COMPARISONS, attacks=("worst-case", "fgsm"), replicates=2000)
    verdict.to_csv(args.results / "study_verdict.csv", index=False)
    rows = []
    for fam, seed, run in finished_runs(recipe, args):
        card = json.loads((run / "best.json").read_text())
        rows.append({"family": fam.label, "seed": seed, "model": fam.model, "width": recipe.width,
                     "adversarial": fam.adversarial, "test_acc": card.get("clean_test_accuracy"),
                     "precision": card.get("precision"), "train_s": round(run_seconds(run), 1),
                     "train_cpu_s": round(run_seconds(run, "cpu_seconds"), 1)})
    with (args.results / "study_networks.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["family"])
        w.writeheader()
        w.writerows(rows)
    print(verdict.round(4).to_string(index=False))


# ------------------------------------------------------------------------------------------- main
def record_sitting(path: Path, recipe: Recipe, stage: str, wall_s: float, cpu_s: float,
                   extra: dict[str, Any]) -> dict[str, Any]:
    """Add one sitting of ``stage`` to the timings file and return the whole file.

    The file is read again here, not at start: two study processes may share one results folder
    (the train stage in one, the sweep of the networks already finished in the other), and each
    adds only its own stage's entries. ``cpu_s``: CPU time of this process and of the training
    processes it started and waited for (``--jobs``), all threads; a paused or crowded sitting does
    not inflate it.
    """
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings["recipe"] = asdict(recipe)
    timings.update(extra)
    for key, seconds in (("sittings_s", wall_s), ("cpu_sittings_s", cpu_s)):
        timings.setdefault(key, {}).setdefault(stage, []).append(round(seconds, 1))
    timings[f"{stage}_s"] = round(sum(timings["sittings_s"][stage]), 1)
    timings[f"{stage}_cpu_s"] = round(sum(timings["cpu_sittings_s"][stage]), 1)
    atomic_write_json(path, timings)
    return timings


def cpu_time_with_children() -> float:
    """User + system CPU seconds of this process and its finished children (the ``--jobs`` runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def data_name_for(args: argparse.Namespace) -> str:
    if args.data:
        return args.data
    from train_cifar10 import default_cache_dir, unpack

    from robustbench_lta.data.registry import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        sys.exit("error: ../shared/data/cifar10-jpeg is absent: pass --data (e.g. cifar10 with "
                 "torchvision's files, or imagefolder:DIR)")
    return f"imagefolder:{unpack(shared, default_cache_dir())}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--stages", default="train,sweep,report")
    p.add_argument("--families", default=",".join(f.label for f in STUDY_FAMILIES),
                   help=f"comma list of family labels (default: the six of the study; also "
                        f"{', '.join(f.label for f in FAMILIES[6:])})")
    p.add_argument("--seeds", default=None, help="override the recipe's seeds (comma list)")
    p.add_argument("--n", type=int, default=None, help="override the recipe's attacked test images")
    p.add_argument("--data", default=None, help="dataset name (default: the CIFAR-10 JPEGs of ../shared)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many runs side by side, the threads split among them (small "
                        "models use 2 threads poorly: training/concurrent.py); default 1")
    p.add_argument("--runs", type=Path, default=Path("runs/study3"),
                   help="scratch folder of the runs in training (default: runs/study3)")
    p.add_argument("--archive", default=None,
                   help="committed folder of the finished networks and the sweep's results "
                        "(study_archive.py; default for the cpu recipe: benchmarks/study3; 'none': "
                        "keep everything in --runs and --results)")
    p.add_argument("--results", type=Path, default=None,
                   help="the sweep's results folder (default: <archive>/results, else results/study3)")
    p.add_argument("--report", type=Path, default=None, help="default: <results>/study.pdf")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    recipe = RECIPES[args.recipe]
    if args.seeds:
        recipe = replace(recipe, seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()))
    if args.n:
        recipe = replace(recipe, n=args.n)
    by_label = {f.label: f for f in FAMILIES}
    unknown = [f for f in args.families.split(",") if f.strip() and f.strip() not in by_label]
    if unknown:
        sys.exit(f"error: unknown families {unknown}: choose from {', '.join(by_label)}")
    args.families = [by_label[f.strip()] for f in args.families.split(",") if f.strip()]
    if args.archive is None:
        args.archive = ARCHIVES.get(recipe.name)
    elif args.archive.lower() == "none":
        args.archive = None
    else:
        args.archive = Path(args.archive)
    if args.results is None:
        args.results = args.archive / "results" if args.archive else Path("results/study3")
    args.report = args.report or args.results / "study.pdf"
    if args.threads:
        torch.set_num_threads(args.threads)
    # SIGTERM stops like Ctrl-C: the trainer and the sweep keep what they finished
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.results.mkdir(parents=True, exist_ok=True)
    timings_path = args.results / "study_timings.json"
    data_name = data_name_for(args)
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        t0, cpu0 = time.perf_counter(), cpu_time_with_children()
        print(f"== {stage} ({recipe.name} recipe)", flush=True)
        extra: dict[str, Any] = {}
        try:
            if stage == "train":
                extra["train_per_run_s"] = stage_train(recipe, args, data_name)
            elif stage == "sweep":
                stage_sweep(recipe, args, data_name)
            elif stage == "report":
                stage_report(recipe, args)
            else:
                sys.exit(f"error: unknown stage {stage!r} (train, sweep, report)")
        except KeyboardInterrupt:
            print(f"   {stage}: interrupted; run the same command again to resume", flush=True)
            return 130
        finally:
            timings = record_sitting(timings_path, recipe, stage, time.perf_counter() - t0,
                                     cpu_time_with_children() - cpu0, extra)
        sittings = len(timings["sittings_s"][stage])
        print(f"   {stage}: {timings[f'{stage}_s']:.0f} s over {sittings} sitting(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
