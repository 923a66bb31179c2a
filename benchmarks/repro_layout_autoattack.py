"""The "any input layout" repro: AutoAttack on a permuted NHWC array, engine vs torchattacks.

A small CIFAR-10 CNN is trained here, outside the project's trainer, on ``mini.npz`` from
``../shared`` (all but 64 images); the other 64 images are read as a numpy (N, H, W, C) array and made
NCHW the usual way (``torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255``, not contiguous);
images are shuffled with seed 0 first, since ``mini.npz`` is sorted by class.
``run_sweep`` with the reference ``autoattack`` and torchattacks' port ``ta:AutoAttack`` at 1/255
and 2/255 on that permuted tensor is compared with ``torchattacks.AutoAttack`` called directly on
the contiguous copy.

    python benchmarks/repro_layout_autoattack.py
"""

from __future__ import annotations

import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.data.registry import shared_data_dir
from robustbench_lta.engine.api import run_sweep


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def main() -> None:
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("error: ../shared/data/cifar10-jpeg not found")
    data = np.load(shared / "mini.npz")
    a, labels = data["x"], torch.from_numpy(data["y"]).long()
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(a)))  # mini.npz is sorted by class
    a, labels = a[order.numpy()], labels[order]
    x_all = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # the usual way: a permuted view
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = x_all[64:].contiguous(), labels[64:]
    t0 = time.perf_counter()
    for _epoch in range(25):
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(_epoch))
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    x, y = x_all[:64], labels[:64]
    print(
        f"trained in {time.perf_counter() - t0:.0f} s; input contiguous: {x.is_contiguous()}; "
        f"clean accuracy on the 64: {(model(x.contiguous()).argmax(1) == y).float().mean():.3f}"
    )
    eps = [1 / 255, 2 / 255]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_sweep(
            {"cnn": model}, ["autoattack", "ta:AutoAttack"], eps, data=(x, y), out=tmp, progress=False
        )
    rows = summary[summary["attack"] != "worst-case"]
    print(rows[["attack", "eps", "status", "robust_acc"]].to_string(index=False))
    import torchattacks

    for e in eps:
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=e, n_classes=10, seed=0)
        adv = atk(x.contiguous(), y)
        with torch.inference_mode():
            acc = float((model(adv).argmax(1) == y).float().mean())
        for name in ("autoattack", "ta:AutoAttack"):
            mine = float(rows[(rows["attack"] == name) & np.isclose(rows["eps"], e)]["robust_acc"].iloc[0])
            print(
                f"eps {e * 255:.0f}/255: torchattacks AutoAttack (contiguous) {acc:.4f}; engine {name} "
                f"(permuted) {mine:.4f}; difference {round((mine - acc) * 64):+d} of 64 samples"
            )


if __name__ == "__main__":
    main()
