"""FGSM over 8 budgets, worst-case accounting, default settings: this engine vs an older checkout.

Same model (bench_work's cached CIFAR-10 SmallCNN), same 512 CIFAR-10 test images, both engines
timed in fresh subprocesses of this run, alternating, best of ``--repeats``. The older engine comes
from a source tree of another commit, e.g. the one before engine v2::

    mkdir -p /tmp/old && git archive 93a8e44 | tar -x -C /tmp/old
    python benchmarks/bench_before_after.py --old-tree /tmp/old

Prints wall seconds of each and the ratio, and checks that both give the same robust accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: start of a child process: argv[1] an older source tree or "" (this one), argv[2] the data, argv[3]
#: the weights; leaves ``data``, ``model`` (eval mode) and ``run_sweep`` of the chosen tree
CHILD_PREAMBLE = r"""
import json, sys, time, tempfile, warnings
import torch
from safetensors.torch import load_file
if sys.argv[1]:  # the older tree: its package, and its attacks/ folder as the built-in attacks
    import types
    sys.path.insert(0, sys.argv[1])
    import robustbench_lta
    builtin = types.ModuleType("robustbench_lta.builtin_attacks")
    builtin.__path__ = [sys.argv[1] + "/attacks"]
    sys.modules["robustbench_lta.builtin_attacks"] = builtin
from robustbench_lta.models.registry import create_model
from robustbench_lta import run_sweep
data = torch.load(sys.argv[2], weights_only=True)
model = create_model("smallcnn", num_classes=10, width=1.0)
model.load_state_dict(load_file(sys.argv[3]))
model.eval()
"""

CHILD = CHILD_PREAMBLE + r"""
eps = [k / 255 for k in range(1, 9)]
with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    s = run_sweep({"cnn": model}, ["fgsm"], eps, data=(data["x"], data["y"]), n=len(data["y"]), out=out,
                  progress=False)
    wall = time.perf_counter() - t0
rows = s[s["attack"] == "fgsm"].sort_values("eps")
print(json.dumps({"wall": wall, "robust": [round(float(v), 6) for v in rows["robust_acc"]]}))
"""


def prepared_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    """bench_work's cached CIFAR-10 model and the first ``n`` test images, saved for child processes."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_work import trained_model
    from train_cifar10 import default_cache_dir, unpack

    from robustbench_lta.data.registry import load_dataset, shared_data_dir

    cifar = unpack(shared_data_dir(), default_cache_dir())
    model = trained_model(cifar / "train")
    ds = load_dataset(f"imagefolder:{cifar / 'test'}", split="test", n=n)
    data, weights = folder / "data.pt", folder / "w.safetensors"
    torch.save({"x": ds.images.float() / 255, "y": ds.labels}, data)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return data, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-tree", required=True, help="source tree of the older commit")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, weights = prepared_inputs(Path(tmp), args.n)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits both
            for name, tree in (("old", args.old_tree), ("new", "")):
                out = subprocess.run([sys.executable, "-c", CHILD, tree, str(data), str(weights)],
                                     capture_output=True, text=True, env=env, cwd=tmp)
                if out.returncode:
                    raise SystemExit(f"{name} failed: {out.stderr[-2000:]}")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    walls = {k: sorted(r["wall"] for r in v) for k, v in runs.items()}
    pairs = sorted(o["wall"] / n["wall"] for o, n in zip(runs["old"], runs["new"], strict=True))
    print(f"n={args.n}, FGSM x 8 budgets, default settings, {args.repeats} alternating runs "
          f"(wall of run_sweep inside each process; min / median / max):")
    for name in ("old", "new"):
        w = walls[name]
        print(f"  {name}: {w[0]:.2f} / {w[len(w) // 2]:.2f} / {w[-1]:.2f} s, robust accuracies "
              f"{runs[name][0]['robust']}")
    print(f"  old/new per pair: {pairs[0]:.2f} / {pairs[len(pairs) // 2]:.2f} / {pairs[-1]:.2f}x; "
          f"same robust accuracies: {runs['old'][0]['robust'] == runs['new'][0]['robust']}")


if __name__ == "__main__":
    main()
