"""AutoAttack's components one at a time on a checkpoint: where a PGD-50 vs AutoAttack gap comes from.

A benchmark script, not a test. First the project's ``pgd-linf`` with 50 steps on the cross-entropy
and on the Carlini-Wagner margin (``loss=margin``), one restart each and then their per-sample worst
case; then the authors' package (``pyautoattack``) with ``version="custom"`` and one component at a
time (APGD-CE, APGD-DLR, APGD-T with 9 targets) at Linf ``--eps``/255 on the first ``--n`` CIFAR-10
test images (the JPEG copy of ``../shared``), and prints each robust accuracy. A gap closed by a
margin loss (PGD-CW, APGD-DLR) is the cross-entropy loss's scale, not a gradient the model hides::

    python benchmarks/aa_components.py runs/adv/vgg16_fgsm-rs/best.safetensors --n 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import cifar10_test  # noqa: E402

from robustbench_lta.plugins import get_attack  # noqa: E402
from robustbench_lta.training.checkpoint import load_model  # noqa: E402


class Logits(torch.nn.Module):
    """The project model's logits alone (attention models also return maps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


def _still_right(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pgd-only", action="store_true", help="the two PGD-50 runs, not AutoAttack's components")
    args = p.parse_args(argv)
    from pyautoattack import AutoAttack

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = cifar10_test(args.n)
    x, y = ds.images.float() / 255, ds.labels
    model = Logits(load_model(args.checkpoint)).eval()
    with torch.no_grad():
        print(f"clean {(model(x).argmax(1) == y).float().mean():.3f} on {args.n} images", flush=True)
    robust = torch.ones_like(y, dtype=torch.bool)
    for loss in ("ce", "margin"):
        t0 = time.perf_counter()
        attack = get_attack("pgd-linf", steps=50, loss=loss, seed=0)
        ok = torch.cat([_still_right(model, attack(model, x[s:s + 250], y[s:s + 250], args.eps / 255),
                                     y[s:s + 250]) for s in range(0, len(x), 250)])
        robust &= ok
        seconds = time.perf_counter() - t0
        print(f"pgd-50 ({loss}): robust {ok.float().mean():.3f} ({seconds:.0f} s)", flush=True)
    print(f"pgd-50 worst case of ce and margin: robust {robust.float().mean():.3f}", flush=True)
    for component in () if args.pgd_only else ("apgd-ce", "apgd-dlr", "apgd-t"):
        t0 = time.perf_counter()
        aa = AutoAttack(model, norm="Linf", eps=args.eps / 255, version="custom", attacks=[component], seed=0)
        if component == "apgd-t":
            aa.apgd_targeted.n_target_classes = 9
        adv = aa.run_standard_evaluation(x, y, batch_size=250)
        adv = adv[0] if isinstance(adv, tuple) else adv
        with torch.no_grad():
            acc = (model(adv).argmax(1) == y).float().mean().item()
        print(f"{component}: robust {acc:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
