"""Study v3 on one GPU machine without internet, as one command (``make gpu-study``).

A benchmark script, not a test. On the machine with the accelerator (docs/gpu.md: Python 3.12,
torch with CUDA, no package registry, at most 600 s per command):

1. installs the carried wheels and this tree's package into a temporary target (as gpu_check.py);
2. unpacks the carried CIFAR-10 archives (``.gpu_data``, made by ``make gpu-wheels``);
3. runs ``benchmarks/study.py --recipe gpu`` (train, sweep, report: a reduced study, see the
   ``gpu`` recipe there and docs/study.md) with that target first on the path, into ``runs/gpu_study``
   and ``results/gpu_study`` of the working tree (ignored folders the device tool keeps between
   calls), and stops it cleanly (SIGTERM: every finished epoch and sweep unit is kept) at
   ``--budget`` seconds, so running the same command again resumes;
4. copies the study's tables, timings and PDF to ``--out`` (default ``$OUT``).

``--quick`` (``QUICK=1 make gpu-study``; CI runs it) rehearses the same path on CPU: synthetic
32x32 images and the ``rehearsal`` recipe (a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import child_env, install, synthetic_npz, unpack_cifar10  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEEP = ("study_networks.csv", "study_verdict.csv", "study_family_curves.csv", "study_family_intervals.csv",
        "study_timings.json", "summary.csv", "study.pdf")


def unpack_once(src: Path, dest: Path) -> Path:
    """The carried archives unpacked into ``dest``, unless an earlier call finished doing so."""
    done = dest / ".unpacked"
    if not done.is_file():
        shutil.rmtree(dest, ignore_errors=True)  # a half-unpacked folder from an interrupted call
        unpack_cifar10(src, dest)
        done.touch()
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")),
                    help="the CPU rehearsal: synthetic data, the rehearsal recipe (also QUICK=1)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "reports" / "gpu_study"))
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--data", default=str(REPO / ".gpu_data" / "cifar10-jpeg"))
    ap.add_argument("--work", default=None, help="runs and results folder (default: runs/, results/ here)")
    ap.add_argument("--budget", type=float, default=540,
                    help="seconds before the study is stopped cleanly (run again to resume)")
    args = ap.parse_args(argv)
    start = time.time()
    tag = "gpu_study_quick" if args.quick else "gpu_study"
    work = Path(args.work) if args.work else REPO
    runs, results = work / "runs" / tag, work / "results" / tag
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-study-") as tmp:
        target = Path(tmp) / "site"
        inst = install(Path(args.wheels), target)
        print(f"installed {len(inst['wheels'])} wheels + robustbench_lta ({inst['seconds']} s)", flush=True)
        # the data at a path that outlives this call: a run's card names its dataset, and the resumed
        # runs refuse another name (a temporary folder each call made "run it again" fail)
        data_dir = runs / "_data"
        data_dir.mkdir(parents=True, exist_ok=True)
        if args.quick:
            data = f"npz:{synthetic_npz(data_dir / 'synthetic.npz', 256, 128)}"
        else:
            data = f"imagefolder:{unpack_once(Path(args.data), data_dir / 'cifar10')}"
        cmd = [sys.executable, str(REPO / "benchmarks" / "study.py"), "--recipe",
               "rehearsal" if args.quick else "gpu", "--data", data, "--runs", str(runs),
               "--results", str(results)]
        # the installed copy, not this tree, is what runs: run from outside the repository
        proc = subprocess.Popen(cmd, env=child_env(target), cwd=tmp)
        try:
            rc = proc.wait(timeout=max(30.0, start + args.budget - time.time()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
            print(f"stopped at the {args.budget:.0f} s budget; run it again to resume", flush=True)
    for name in KEEP:
        if (results / name).is_file():
            shutil.copy2(results / name, out / name)
    print(f"study exit {rc}; {time.time() - start:.0f} s; tables in {out}", flush=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
