"""Adversarial training: the training threat model's examples and loss, robust validation, collapse.

Three methods (``adversarial.method`` in the training config,
:class:`~robustbench_lta.config.AdversarialSpec`):

- ``pgd``: PGD-AT (Madry et al. 2018): ``steps`` PGD steps of size ``step_size`` from a uniform random
  start in the ``eps``-ball, last iterate, cross-entropy on the adversarial batch only.
- ``fgsm-rs``: fast AT (Wong et al. 2020): one signed step of 1.25 ``eps`` from a uniform random start,
  projected; cross-entropy on it. Cheap (two passes per batch) but prone to catastrophic overfitting.
- ``n-fgsm``: N-FGSM (de Jorge et al. 2022): one signed step of ``eps`` from uniform noise of
  ``noise_factor`` x ``eps`` (2 by default), not projected back to the ``eps``-ball (the training
  perturbation reaches 3 ``eps``); the stronger noise is what keeps single-step training out of
  catastrophic overfitting at 8/255, at FGSM-RS's cost.
- ``trades``: TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` (KL summed, over
  the batch size), ``x'`` maximising the KL term from ``x + 0.001 N(0, I)``.

All four are :func:`robustbench_lta.pgd.pgd`-style calls of the same loop the sweep's ``pgd-linf`` and
``pgd-l2`` run (``keep="last"`` here: every sample takes every step, as the reference code does).

Where batch norm sits while examples are generated, following each method's reference code:
``pgd``, ``fgsm-rs`` and ``n-fgsm`` generate in **train mode** (Rice et al.'s and Wong et al.'s code call the
attack on the model in train mode: batch norm normalises with the batch's own statistics, the same
ones the update step then uses, and the running statistics also move with the attack's forwards);
``trades`` generates in **eval mode** (Zhang et al.'s code calls ``model.eval()`` for the inner
maximisation and ``model.train()`` before the loss), so the running statistics see clean batches only.

Robust validation measures, on the first ``eval_n`` validation images in eval mode, the accuracy under
the sweep's PGD (``eval_steps`` steps, step ``2.5 eps / steps``, best iterate: the ``pgd-linf``/``pgd-l2``
attack) and under FGSM (one step of ``eps`` from the clean image). Selection picks ``best`` on the PGD
figure (robust overfitting, Rice et al. 2020). Catastrophic overfitting (Wong et al.) is the PGD figure
collapsing (below ``collapse_ratio`` of its best so far) while the FGSM figure rises or holds
(:func:`is_collapsed`): such an epoch is flagged in history.csv, the log and the card, and never selected.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdversarialSpec
from ..pgd import Ball, default_alpha, margin_objective, pgd, projected_gradient_ascent
from ..utils import derive_seed
from .batches import DeviceBatches, to_float

#: fp16 input gradients underflow for small losses: the attack ascends a scaled loss (sign and L2
#: direction of the gradient are unchanged by a constant factor).
_FP16_LOSS_SCALE = 2.0**10


@dataclass
class AdversarialLoss:
    """The training loss under the threat model, one batch at a time."""

    spec: AdversarialSpec
    label_smoothing: float = 0.0
    amp_dtype: torch.dtype | None = None

    @property
    def ball(self) -> Ball:
        return Ball(self.spec.norm, self.spec.eps01, self.spec.step01)

    def _scale(self) -> float:
        return _FP16_LOSS_SCALE if self.amp_dtype == torch.float16 else 1.0

    def examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> torch.Tensor:
        """The adversarial batch for ``pgd``, ``fgsm-rs`` and ``n-fgsm`` (train mode, last iterate)."""
        scale = self._scale()
        ascend = margin_objective(y) if self.spec.loss == "margin" else None

        def objective(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if ascend is not None:
                return ascend(logits, idx) * scale
            return F.cross_entropy(logits.float(), y[idx], reduction="sum") * scale

        with autocast or contextlib.nullcontext():
            if self.spec.method == "n-fgsm":
                # start in the noise ball, step in a ball wide enough that projecting is a no-op
                noise = Ball(self.spec.norm, self.spec.noise_factor * self.spec.eps01, self.spec.step01)
                reach = Ball(self.spec.norm, self.spec.noise_factor * self.spec.eps01 + self.spec.step01,
                             self.spec.step01)
                x = x.detach()
                return projected_gradient_ascent(
                    model, x, y, steps=1, restarts=1, draw_start=lambda: noise.uniform_start(x, generator),
                    step=reach.step, keep="last", objective=objective,
                )
            return pgd(model, x, y, norm=self.spec.norm, eps=self.spec.eps01, steps=self.spec.train_steps,
                       alpha=self.spec.step01, generator=generator, keep="last", objective=objective)

    def trades_examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> torch.Tensor:
        """TRADES' inner maximisation of KL(f(x) || f(x')) in eval mode (the model's mode is restored)."""
        was_training = model.training
        model.eval()
        scale = self._scale()
        ball = self.ball
        try:
            with autocast or contextlib.nullcontext():
                with torch.no_grad():
                    p_nat = F.softmax(model(x).float(), dim=1)
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

                def objective(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                    return F.kl_div(F.log_softmax(logits.float(), dim=1), p_nat[idx], reduction="sum") * scale

                return projected_gradient_ascent(
                    model, x, y, steps=self.spec.steps, restarts=1,
                    draw_start=lambda: (lambda idx: x[idx] + 0.001 * noise[idx]),
                    step=ball.step, keep="last", objective=objective,
                )
        finally:
            model.train(was_training)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, logits the training accuracy is counted on: the adversarial batch's
        for pgd/fgsm-rs/n-fgsm, the clean batch's for trades)."""
        ctx = autocast or contextlib.nullcontext()
        if self.spec.method == "trades":
            x_adv = self.trades_examples(model, x, y, generator, autocast)
            with ctx:
                logits_nat = model(x)
                logits_adv = model(x_adv)
            return trades_loss(logits_nat, logits_adv, y, self.spec.beta, self.label_smoothing), logits_nat
        x_adv = self.examples(model, x, y, generator, autocast)
        with ctx:
            logits = model(x_adv)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits


def trades_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``CE(f(x), y) + beta / N * sum KL(softmax f(x) || softmax f(x'))`` (Zhang et al.'s code)."""
    natural = F.cross_entropy(logits_nat.float(), y, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_nat.float(), dim=1),
                      reduction="sum") / y.shape[0]
    return natural + beta * robust


# ------------------------------------------------------------------------------ robust validation
@dataclass(frozen=True)
class RobustValidation:
    """Validation accuracy under the training threat model's PGD and FGSM."""

    pgd_acc: float
    fgsm_acc: float
    n: int


def robust_validation(
    model: nn.Module, data: DeviceBatches, spec: AdversarialSpec, *, batch_size: int, channels_last: bool,
    seed: int, epoch: int, autocast: contextlib.AbstractContextManager | None = None,
) -> RobustValidation:
    """PGD (the sweep's, best iterate) and FGSM accuracy on the first ``spec.eval_n`` validation images.

    Eval mode; the attacks' gradients under ``autocast`` (as training runs), predictions in float32.
    The PGD start is seeded by (seed, epoch), so a resumed run measures what an uninterrupted one would.
    """
    was_training = model.training
    model.eval()
    n = min(spec.eval_n, len(data))
    pgd_ok = fgsm_ok = 0
    eps = spec.eps01
    ctx = autocast or contextlib.nullcontext()
    try:
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n))
            xb, y = data.get(index)
            x = to_float(xb, channels_last)
            gen = torch.Generator(device=x.device).manual_seed(derive_seed(seed, "robust-val", epoch, start))
            with ctx:
                x_pgd = pgd(model, x, y, norm=spec.norm, eps=eps, steps=spec.eval_steps,
                            alpha=default_alpha(eps, spec.eval_steps), generator=gen, keep="best")
                x_fgsm = pgd(model, x, y, norm=spec.norm, eps=eps, steps=1, alpha=eps, random_start=False,
                             generator=gen, keep="last")
            with torch.no_grad():
                pgd_ok += int((model(x_pgd).argmax(1) == y).sum())
                fgsm_ok += int((model(x_fgsm).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return RobustValidation(pgd_ok / max(n, 1), fgsm_ok / max(n, 1), n)


def is_collapsed(history: list[dict[str, Any]], measured: RobustValidation, ratio: float) -> bool:
    """Catastrophic overfitting at this epoch: PGD accuracy below ``ratio`` of its best earlier value
    while the single-step attack stopped tracking it: FGSM accuracy rose since the previous
    measurement, or fell by less than half as much (relative to the best epoch's) as PGD accuracy did.
    Once collapsed, an epoch stays flagged until PGD accuracy recovers above that line.

    Why not "FGSM rose" alone: a network that collapses during the learning-rate warm-up can lose
    FGSM accuracy too, just far less than PGD accuracy (vgg16_att3_concat_pc width 0.125, FGSM-RS
    8/255, epoch 2 -> 3: PGD-10 8.2 % -> 0.0 %, FGSM 32.4 % -> 26.6 %). When training merely degrades,
    both attacks' accuracies fall together.
    """
    earlier = [r for r in history if r.get("robust_val_acc") is not None]
    healthy = [r for r in earlier if not r.get("collapsed")]
    if not healthy:
        return False
    best_row = max(healthy, key=lambda r: float(r["robust_val_acc"]))
    best = float(best_row["robust_val_acc"])
    if best <= 0 or measured.pgd_acc >= ratio * best:
        return False
    if earlier[-1].get("collapsed") or measured.fgsm_acc > float(earlier[-1]["fgsm_val_acc"]):
        return True
    pgd_drop = 1.0 - measured.pgd_acc / best
    best_fgsm = float(best_row["fgsm_val_acc"])
    fgsm_drop = 1.0 - measured.fgsm_acc / best_fgsm if best_fgsm > 0 else 1.0
    return fgsm_drop < pgd_drop / 2
