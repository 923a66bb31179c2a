"""Small sweeps at default settings: FGSM at 8 budgets, ``run_sweep`` vs torchattacks called per budget.

A benchmark script, not a test (issue "Speed v3"). What a new user runs first: ``run_sweep`` with its
defaults (worst-case accounting, the model pass: sanity checks, the large-eps probe, attention figure
data), into a fresh results folder each time (a first run: no model pass cached from before), against
``torchattacks.FGSM`` called once per budget on every sample plus a prediction forward. Both run in
this process, round-robin, ``--repeats`` times; min and median are printed, the ratio is of minima.

Two models on the first ``--n`` CIFAR-10 test images of ``../shared``:

- ``untrained``: ``vgg16_att3_concat_pc`` width 0.125 with seeded random weights, labelled with its own
  clean predictions, so every sample is clean-correct (survivors-only evaluation saves nothing on
  the clean pass: the engine's worst case for this comparison);
- ``trained``: checkpoints (``--checkpoint``, several allowed); by default the study archive's
  standard ``vgg16`` width 0.125 (5 MMAC a 32x32 image: fixed costs weigh most on it) and, where it
  has been trained (``python benchmarks/bf16_training.py --parts parity``, 3 epochs, ~6 min on 2
  cores), the float32 ``vgg16_att3_concat_pc`` width 0.25 (245 MMAC, the issue's bf16 model).

    python benchmarks/bench_small_sweep.py --n 128 --repeats 5
    python benchmarks/bench_small_sweep.py --n 512 --repeats 3 --models trained

The engine's model pass (sanity checks, the large-eps probe, attention figure data) is timed inside
each engine run and printed as its share of the engine's time.

Also checks that the engine and torchattacks predict the same class for every clean-correct sample at
every budget (FGSM is deterministic), and prints how many differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aa_components import Logits  # noqa: E402
from bench_sweep import load_avg, print_machine  # noqa: E402
from bench_work import FGSM_EPS, torchattacks_per_budget  # noqa: E402
from train_cifar10 import cifar10_test  # noqa: E402

from robustbench_lta.data.registry import ImageDataset  # noqa: E402
from robustbench_lta.engine.api import run_sweep  # noqa: E402
from robustbench_lta.engine.executors.worker import Worker  # noqa: E402
from robustbench_lta.models.registry import create_model  # noqa: E402
from robustbench_lta.plugins.registry import get_attack  # noqa: E402
from robustbench_lta.training.checkpoint import load_model  # noqa: E402

#: each default trained model: the first of its paths that exists
DEFAULT_CHECKPOINTS = (("benchmarks/study3/networks/vgg16/seed0/best.safetensors",
                        "runs/study3/vgg16/seed0/best.safetensors",
                        "runs/adv125/vgg16_standard/best.safetensors"),
                       ("runs/bf16_parity/vgg16_att3_concat_pc_off/best.safetensors",
                        "runs/bf16_parity_zen5/vgg16_att3_concat_pc_off/best.safetensors"))
BATCH = 128


def predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(x[s:s + BATCH]).argmax(1).numpy() for s in range(0, len(x), BATCH)])


class ModelPassTimer:
    """Seconds the engine spends in its model pass, summed over the runs inside ``with``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> ModelPassTimer:
        self.seconds = 0.0
        self._inner = Worker.run_model_pass
        timer = self

        def timed(worker: Worker, *args: object, **kwargs: object) -> None:
            t0 = time.perf_counter()
            try:
                timer._inner(worker, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0

        Worker.run_model_pass = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Worker.run_model_pass = self._inner  # type: ignore[method-assign]


def engine_sweep(model: torch.nn.Module, ds: ImageDataset, workdir: Path) -> tuple[pd.DataFrame, float]:
    """run_sweep at its defaults into a fresh folder; the samples table and the model pass's seconds."""
    out = Path(tempfile.mkdtemp(prefix="sweep-", dir=workdir))
    with warnings.catch_warnings(), ModelPassTimer() as model_pass:
        warnings.simplefilter("ignore")
        run_sweep({"model": model}, ["fgsm"], list(FGSM_EPS), data=ds, n=len(ds), batch_size=BATCH,
                  device="cpu", seed=0, out=out, progress=False)
    samples = pd.read_parquet(out / "samples.parquet")
    shutil.rmtree(out, ignore_errors=True)
    return samples, model_pass.seconds


def engine_preds(samples: pd.DataFrame, n: int) -> np.ndarray:
    """(budgets, n) adversarial predictions; a sample broken at a smaller budget keeps its example."""
    out = np.full((len(FGSM_EPS), n), -1, dtype=np.int64)
    s = samples[samples["attack"] == "fgsm"]
    for k, e in enumerate(FGSM_EPS):
        rows = s[np.isclose(s["eps"].to_numpy(), e)]
        out[k, rows["index"].to_numpy()] = rows["adv_pred"].to_numpy()
    return out


def work_floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, samples: pd.DataFrame) -> float:
    """Seconds of the compute no verified FGSM sweep can skip, on the samples the engine attacked.

    The clean pass on every sample, one input gradient on the samples attacked at the smallest
    budget (FGSM's direction is the same at every budget), and one forward per budget on the samples
    still attacked there (the worst-case rule: a sample broken at a smaller budget is not attacked
    again). torchattacks' seconds over this is the most any such sweep could reach on this model:
    the rest of the engine's time is bookkeeping (the model pass, checks, tables, files).
    """
    s = samples[samples["attack"] == "fgsm"]
    attacked = []
    for e in FGSM_EPS:
        rows = s[np.isclose(s["eps"].to_numpy(), e)]
        mask = np.zeros(len(x), dtype=bool)
        mask[rows["index"].to_numpy()[rows["attacked"].to_numpy()]] = True
        attacked.append(torch.from_numpy(mask))
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # as the engine attacks: input gradients only
    try:
        t0 = time.perf_counter()
        predict(model, x)
        first = attacked[0]
        # the engine's own FGSM plugin: one input gradient for every budget
        advs = get_attack("fgsm", seed=0).perturb_many(model, x[first], y[first], list(FGSM_EPS))
        for adv, mask in zip(advs, attacked, strict=True):
            predict(model, adv[mask[first]])
        return time.perf_counter() - t0
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)


def bench(name: str, model: torch.nn.Module, ds: ImageDataset, repeats: int, workdir: Path) -> float:
    x, y = ds.images.float() / 255, ds.labels
    clean = predict(model, x)
    correct = clean == y.numpy()
    print(f"\n== {name}: n={len(ds)}, clean-correct {correct.mean():.1%}", flush=True)
    logits = Logits(model).eval()
    small = ds.subset(np.arange(8))  # warm-up: first-call costs out of the timings
    engine_sweep(model, small, workdir)
    torchattacks_per_budget(logits, x[:8], y[:8], "fgsm", list(FGSM_EPS), BATCH)
    times: dict[str, list[float]] = {"engine": [], "torchattacks": [], "floor": []}
    model_pass_share = []
    for r in range(repeats):
        t0 = time.perf_counter()
        samples, model_pass = engine_sweep(model, ds, workdir)
        times["engine"].append(time.perf_counter() - t0)
        model_pass_share.append(model_pass / times["engine"][-1])
        seconds, ta_preds = torchattacks_per_budget(logits, x, y, "fgsm", list(FGSM_EPS), BATCH)
        times["torchattacks"].append(seconds)
        times["floor"].append(work_floor(model, x, y, samples))
        print(f"  round {r + 1}: engine {times['engine'][-1]:.2f} s, torchattacks {seconds:.2f} s, "
              f"floor {times['floor'][-1]:.2f} s, model pass {model_pass_share[-1]:.0%} of the engine's "
              f"(load {load_avg()})", flush=True)
    ours = engine_preds(samples, len(ds))
    # worst case: torchattacks' per-budget flags accumulate over budgets the way the engine's do
    ta_broken = np.maximum.accumulate(ta_preds != y.numpy()[None, :], axis=0)
    our_broken = ours != y.numpy()[None, :]
    differ = int((ta_broken[:, correct] != our_broken[:, correct]).sum())
    for m, t in times.items():
        print(f"  {m:13s} min {min(t):.2f} s  median {statistics.median(t):.2f} s  max {max(t):.2f} s")
    ratio = min(times["torchattacks"]) / min(times["engine"])
    bound = min(times["torchattacks"]) / min(times["floor"])
    attacked = samples.loc[samples["attack"] == "fgsm", "attacked"].sum() / len(ds)
    print(f"  ratio torchattacks / engine (minima): {ratio:.2f}x; broken flags differing on clean-correct "
          f"samples x budgets: {differ} of {int(correct.sum()) * len(FGSM_EPS)}")
    print(f"  floor: the compute no verified sweep can skip ({attacked:.2f} forwards per sample over the "
          f"{len(FGSM_EPS)} budgets, one gradient, the clean pass): torchattacks / floor {bound:.2f}x is the "
          f"most any FGSM sweep could reach here; the engine's bookkeeping is "
          f"{1 - min(times['floor']) / min(times['engine']):.0%} of its time")
    share = statistics.median(model_pass_share)
    print(f"  model pass (checks, probe, figure data): median {share:.0%} of the engine's time")
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["untrained", "trained"], choices=["untrained", "trained"])
    ap.add_argument("--checkpoint", type=Path, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    print_machine(args.threads)
    data = cifar10_test(args.n)
    workdir = Path(tempfile.mkdtemp(prefix="bench-small-"))
    try:
        if "untrained" in args.models:
            torch.manual_seed(0)
            model = create_model("vgg16_att3_concat_pc", num_classes=10, width=0.125).eval()
            own = predict(model, data.images.float() / 255)
            ds = ImageDataset(data.images, own, classes=data.classes, name=data.name, mean=data.mean,
                              std=data.std)
            bench("untrained vgg16_att3_concat_pc w0.125, labels = its own predictions", model, ds,
                  args.repeats, workdir)
        if "trained" in args.models:
            chosen = args.checkpoint or [next((Path(c) for c in paths if Path(c).is_file()), None)
                                         for paths in DEFAULT_CHECKPOINTS]
            for k, ckpt in enumerate(chosen):
                if ckpt is None:
                    print(f"\n== trained: none of {', '.join(DEFAULT_CHECKPOINTS[k])} (train it, or pass "
                          "--checkpoint)")
                else:
                    bench(f"trained {ckpt}", load_model(ckpt).eval(), data, args.repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
