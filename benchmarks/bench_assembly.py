"""Assembly of a results folder: the old whole-study pandas concat vs the streamed per-model pass.

Builds synthetic results folders (unit files exactly as workers write them) of 10^6 and 10^7
per-sample rows: ``models x 5 attacks x 10 eps x 10,000 samples`` with 2 and 20 models, so rows per
model stay fixed while the number of models grows. Each variant runs in a fresh subprocess, which
reports its own peak RSS (``ru_maxrss``) and wall time:

- ``old``: every unit frame concatenated into one pandas frame, the worst case computed on it (the
  engine before v2 did this in ``SweepRunner._finish``);
- ``new``: :func:`robustbench_lta.engine.finish.assemble`, one model's rows at a time, pyarrow
  ``ParquetWriter`` for samples.parquet.

    python benchmarks/bench_assembly.py                # both sizes, both variants
    python benchmarks/bench_assembly.py --models 2     # one size
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
import pandas as pd

ATTACKS, EPS, SAMPLES, SHARD = 5, 10, 10_000, 1_000


def _plans():
    from robustbench_lta.engine.plan import AttackPlan
    from robustbench_lta.plugins.registry import get_attack

    proto = get_attack("fgsm")
    eps = tuple((i + 1) / 255 for i in range(EPS))
    return [
        AttackPlan(label=f"a{i}", name="fgsm", params={}, eps=eps, prototype=proto) for i in range(ATTACKS)
    ]


def _cells(models: int):
    from robustbench_lta.engine.plan import Cell

    return [
        Cell(model=f"m{m:03d}", model_sha256=f"{m:064d}", attack=a, key=f"{m:03d}{a.label}".ljust(64, "0"))
        for m in range(models)
        for a in _plans()
    ]


def make_folder(root: Path, models: int) -> None:
    from robustbench_lta.engine.store import ResultStore

    store = ResultStore(root)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, SAMPLES)
    for cell in _cells(models):
        clean = np.where(rng.random(SAMPLES) < 0.8, label, (label + 1) % 10)
        broken_at = rng.integers(0, EPS + 3, SAMPLES)  # budget index at which each sample breaks
        for start in range(0, SAMPLES, SHARD):
            sl = slice(start, start + SHARD)
            frames = []
            for k, e in enumerate(cell.attack.eps):
                broken = (broken_at[sl] <= k) | (clean[sl] != label[sl])
                adv = np.where(broken, (label[sl] + 2) % 10, label[sl])
                frames.append(
                    pd.DataFrame(
                        {
                            "model": cell.model,
                            "attack": cell.attack.label,
                            "eps": e,
                            "index": np.arange(start, start + SHARD),
                            "label": label[sl],
                            "clean_pred": clean[sl],
                            "adv_pred": adv,
                            "norm": np.where(broken, e, 0.0),
                            "attacked": clean[sl] == label[sl],
                            "broken": adv != label[sl],
                        }
                    )
                )
            meta = {
                "key": cell.key,
                "cell": cell.id,
                "model": cell.model,
                "attack": cell.attack.label,
                "start": start,
                "stop": start + SHARD,
                "eps_status": [
                    {
                        "eps": e,
                        "status": "ok",
                        "message": "",
                        "seconds": 0.1,
                        "forward": SHARD,
                        "backward": SHARD,
                    }
                    for e in cell.attack.eps
                ],
            }
            store.write_unit(cell.id, f"{start:09d}-{start + SHARD:09d}", meta, pd.concat(frames), None)


def _units(root: Path, models: int):
    from robustbench_lta.engine.finish import CellUnits

    out = []
    for cell in _cells(models):
        metas = [json.loads(p.read_text()) for p in sorted((root / "units" / cell.id).glob("*.json"))]
        out.append(CellUnits(cell, [(m["start"], m["stop"], m) for m in metas]))
    return out


def run_variant(root: Path, models: int, variant: str) -> dict:
    from robustbench_lta.engine.finish import assemble, combine_eps_status
    from robustbench_lta.engine.sanity import AttackTraits
    from robustbench_lta.engine.store import ResultStore
    from robustbench_lta.results import SUMMARY_COLUMNS, cell_summary_rows, worst_case_rows

    t0 = time.perf_counter()
    cells = _units(root, models)
    if variant == "new":
        traits = {a.label: AttackTraits("white-box", False, True, "linf") for a in _plans()}
        summary = assemble(
            ResultStore(root), [f"m{m:03d}" for m in range(models)], cells, "synthetic", traits, {}
        )
    else:  # the pre-v2 path: every frame in memory at once, one concat, worst case on the whole study
        frames, rows = [], []
        for cu in cells:
            df = pd.concat(
                [
                    pd.read_parquet(root / "units" / cu.cell.id / f"{s:09d}-{e:09d}.parquet")
                    for s, e, _ in cu.units
                ],
                ignore_index=True,
            )
            first = df[df["eps"] == df["eps"].iloc[0]]
            rows += cell_summary_rows(
                df,
                model=cu.cell.model,
                dataset="synthetic",
                attack=cu.cell.attack.label,
                norm="linf",
                label=first["label"].to_numpy(),
                clean_pred=first["clean_pred"].to_numpy(),
                eps_status=combine_eps_status(cu.units),
            )
            frames.append(df)
        samples = pd.concat(frames, ignore_index=True)
        summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        summary = pd.concat(
            [summary, pd.DataFrame(worst_case_rows(summary, samples), columns=SUMMARY_COLUMNS)]
        )
        samples.to_parquet(root / "samples_old.parquet", index=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    wc = summary[summary["attack"] == "worst-case"]
    return {
        "variant": variant,
        "models": models,
        "rows": models * ATTACKS * EPS * SAMPLES,
        "seconds": seconds,
        "peak_rss_mib": peak,
        "worst_case_at_max_eps": float(wc["robust_acc"].iloc[-1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, nargs="*", default=[2, 20])
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "MODELS", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(Path(args.child[0]), int(args.child[1]), args.child[2])))
        return
    results = []
    for models in args.models:
        with tempfile.TemporaryDirectory(prefix="bench-assembly-") as tmp:
            t0 = time.perf_counter()
            make_folder(Path(tmp), models)
            print(
                f"built {models} models x {ATTACKS} attacks x {EPS} eps x {SAMPLES} samples "
                f"({models * ATTACKS * EPS * SAMPLES:,} rows) in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for variant in ("old", "new"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", tmp, str(models), variant],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(f"  {variant}: failed ({out.stderr.strip().splitlines()[-1:]})")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                print(
                    f"  {variant}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                    f"worst case at max eps {r['worst_case_at_max_eps']:.4f}",
                    flush=True,
                )
    print("\n| rows | models | variant | seconds | peak RSS (MiB) |\n|---:|---:|---|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['models']} | {r['variant']} | {r['seconds']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
