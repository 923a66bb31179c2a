"""Per-sample flags of every built-in attack: this engine vs an older checkout, same model and data.

The model and data are bench_work's (a CIFAR-10 SmallCNN, cached); each engine runs in a fresh
subprocess on the first ``--n`` test images at 2/255 and 8/255 (L2 attacks read the same numbers as
L2 budgets), default settings. Prints, per attack, how many (sample, budget) rows have the same
robust flag and the same adversarial prediction. Deterministic attacks must agree exactly;
randomised ones (random starts, noise, Square) draw from seeds the engine derives per unit of work,
so they may differ by a few samples::

    mkdir -p /tmp/old && git archive 93a8e44 | tar -x -C /tmp/old
    python benchmarks/compare_engines.py --old-tree /tmp/old
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ATTACKS = (
    '["fgsm", "fgm-l2", "gaussian-noise", {"name": "pgd-linf", "params": {"steps": 10}},'
    ' {"name": "pgd-l2", "params": {"steps": 10}}, {"name": "mifgsm", "params": {"steps": 10}},'
    ' {"name": "apgd-ce", "params": {"steps": 10}}, {"name": "cw-l2", "params": {"steps": 30}},'
    ' "deepfool", {"name": "square", "params": {"n_queries": 100}},'
    ' {"name": "boundary", "params": {"steps": 100}}]'
)

CHILD_BODY = r"""
import pandas as pd
n = len(data["y"])
with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    run_sweep({"cnn": model}, json.loads(sys.argv[5]), [2 / 255, 8 / 255], data=(data["x"], data["y"]),
              n=n, out=out, progress=False)
    pd.read_parquet(out + "/samples.parquet")[["attack", "eps", "index", "adv_pred", "broken"]].to_parquet(
        sys.argv[4])
"""


def main() -> None:
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_before_after import CHILD_PREAMBLE, prepared_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-tree", required=True, help="source tree of the older commit")
    ap.add_argument("--n", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, weights = prepared_inputs(Path(tmp), args.n)
        frames = {}
        for name, tree in (("old", args.old_tree), ("new", "")):
            out = Path(tmp) / f"{name}.parquet"
            child = CHILD_PREAMBLE + CHILD_BODY
            argv = [sys.executable, "-c", child, tree, str(data), str(weights), str(out), ATTACKS]
            run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
            if run.returncode:
                raise SystemExit(f"{name} failed: {run.stderr[-2000:]}")
            frames[name] = pd.read_parquet(out)
    m = frames["old"].merge(frames["new"], on=["attack", "eps", "index"], suffixes=("_old", "_new"))
    print(f"n={args.n}; rows old {len(frames['old'])}, new {len(frames['new'])}, matched {len(m)}")
    print("| attack | rows | same robust flag | same adversarial prediction |\n|---|---:|---:|---:|")
    for attack, d in m.groupby("attack", sort=False):
        print(f"| {attack} | {len(d)} | {int((d['broken_old'] == d['broken_new']).sum())} | "
              f"{int((d['adv_pred_old'] == d['adv_pred_new']).sum())} |")


if __name__ == "__main__":
    main()
