"""Projected gradient ascent: the one PGD that the sweep's attacks and adversarial training share.

An iterative attack differs from another only in where a restart starts and how one step moves and
projects (:class:`Ball`); the loop is the same and lives here. Two ways to run it:

- ``keep="best"`` (evaluation, the sweep's ``pgd-linf``/``pgd-l2``): per sample the first iterate that
  fools the model, else the one with the highest loss; a fooled sample gets no more gradients. More
  steps or restarts never make the attack weaker. Assumes an eval-mode model (samples independent).
- ``keep="last"`` (training, Madry et al. 2018): every sample takes every step and the last iterate is
  returned; nothing depends on which samples are fooled, so it is also right for a train-mode model
  whose batch norm mixes the samples of a batch.

Below training and plugins (imports torch only), so both layers use this code rather than a copy.
``plugins.iterative`` re-exports the loop for plugin authors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["linf", "l2"]
#: ``loss(logits, idx) -> scalar`` to ascend, for the samples ``idx`` of the batch (default: summed CE)
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Ball:
    """The perturbation set of one threat model: the ``eps``-ball of ``norm`` around x, within [0,1]."""

    norm: Norm
    eps: float
    alpha: float  # step size

    def project(self, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return torch.max(torch.min(x_adv, x0 + self.eps), x0 - self.eps).clamp(0.0, 1.0)
        delta = x_adv - x0
        delta = delta * torch.clamp(self.eps / l2_norms(delta).clamp_min(1e-12), max=1.0)
        return (x0 + delta).clamp(0.0, 1.0)

    def step(self, x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step (sign of the gradient for Linf, its direction for L2), projected."""
        if self.norm == "linf":
            moved = x_adv + self.alpha * grad.sign()
        else:
            moved = x_adv + self.alpha * grad / l2_norms(grad).clamp_min(1e-12)
        return self.project(moved, x0)

    def uniform_start(
        self, x: torch.Tensor, generator: torch.Generator | None, random_start: bool = True
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Draws one start for the whole batch now; returns ``idx -> starting points of those samples``.

        Drawing for the whole batch keeps a sample's start independent of which other samples are
        still attacked. Linf: uniform in the cube; L2: a uniform direction at a uniform radius.
        (The draws happen even without ``random_start``, so a generator advances the same way.)
        """
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if not random_start:
                return lambda idx: x[idx].clone()
            return lambda idx: (x[idx] + (2 * noise[idx] - 1) * self.eps).clamp(0.0, 1.0)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device,
                            dtype=x.dtype)
        if not random_start:
            return lambda idx: x[idx].clone()

        def start(idx: torch.Tensor) -> torch.Tensor:
            d = direction[idx]
            delta = d / l2_norms(d).clamp_min(1e-12) * radius[idx] * self.eps
            delta = delta * torch.clamp(self.eps / l2_norms(delta).clamp_min(1e-12), max=1.0)
            return (x[idx] + delta).clamp(0.0, 1.0)

        return start


class BestIterate:
    """Per sample, the first iterate that fools the model, else the iterate with the highest loss.

    Keeping the best rather than the last iterate means more steps or restarts never make an
    attack weaker, and a good early iterate is not lost to a bad final step.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.y = y
        self.best = x.detach().clone()
        self.loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, idx: torch.Tensor, x_adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Record the iterates ``x_adv`` of samples ``idx``; return which of them fool the model."""
        loss = F.cross_entropy(logits.float(), self.y[idx], reduction="none").detach()
        hit = logits.argmax(dim=1) != self.y[idx]
        take = ~self.fooled[idx] & (hit | (loss > self.loss[idx]))
        self.best[idx[take]] = x_adv[take].detach()
        self.loss[idx[take]] = loss[take]
        self.fooled[idx[hit]] = True
        return hit


def projected_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    restarts: int,
    draw_start: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    keep: Literal["best", "last"] = "best",
    objective: Objective | None = None,
) -> torch.Tensor:
    """Gradient ascent on ``objective`` (default cross-entropy) with restarts.

    Args:
        model: maps [0,1] images to logits.
        x, y: the clean batch and its labels.
        steps: gradient steps per restart.
        restarts: independent starts (``keep="best"`` only); each attacks only the samples no earlier
            restart fooled.
        draw_start: called once per restart, before anything else is drawn; returns a function
            from the indices of the samples still attacked to their starting points.
        step: ``step(x_adv, x0, grad) -> next iterate``, already projected and clipped to [0,1].
        keep: ``"best"`` per-sample best iterate with early stop (evaluation); ``"last"`` every sample
            takes every step, the last iterate is returned (training).
        objective: ``objective(logits, idx) -> scalar`` to ascend for the samples ``idx``.
    """
    x = x.detach()

    def loss_of(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if objective is not None:
            return objective(logits, idx)
        return F.cross_entropy(logits.float(), y[idx], reduction="sum")

    def gradient(x_adv: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = x_adv.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_in)
            (grad,) = torch.autograd.grad(loss_of(logits, idx), x_in)
        return grad, logits.detach()

    if keep == "last":
        idx = torch.arange(x.shape[0], device=x.device)
        x_adv = draw_start()(idx)
        for _ in range(steps):
            grad, _ = gradient(x_adv, idx)
            x_adv = step(x_adv, x, grad).detach()
        return x_adv

    tracker = BestIterate(x, y)
    for _ in range(max(1, restarts)):
        start = draw_start()
        idx = torch.nonzero(~tracker.fooled).squeeze(1)
        if idx.numel() == 0:
            break
        x0, x_adv = x[idx], start(idx)
        for _ in range(steps):
            grad, logits = gradient(x_adv, idx)
            # a fooled sample keeps its first fooling iterate: stop spending gradients on it
            # (eval-mode models treat samples independently, so the others are unaffected)
            alive = ~tracker.update(idx, x_adv, logits)
            if not bool(alive.any()):
                idx = idx[:0]
                break
            idx, x0, x_adv, grad = idx[alive], x0[alive], x_adv[alive], grad[alive]
            x_adv = step(x_adv, x0, grad).detach()
        if idx.numel():
            with torch.no_grad():
                tracker.update(idx, x_adv, model(x_adv))
        if bool(tracker.fooled.all()):
            break
    return tracker.best


def margin_objective(y: torch.Tensor) -> Objective:
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` summed over the samples attacked, as PGD's
    objective (``pgd(..., objective=margin_objective(y))``).

    Unlike cross-entropy it does not saturate on confidently classified samples; a gap between a
    cross-entropy attack and AutoAttack that a margin attack closes is the loss's scale, not a
    gradient the model hides (Croce & Hein 2020).
    """

    def objective(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        true = z.gather(1, y[idx].unsqueeze(1)).squeeze(1)
        others = z.scatter(1, y[idx].unsqueeze(1), -float("inf"))
        return (others.max(dim=1).values - true).sum()

    return objective


def default_alpha(eps: float, steps: int) -> float:
    """The sweep's default step size: ``2.5 * eps / steps`` (Madry et al.)."""
    return 2.5 * eps / max(steps, 1)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    keep: Literal["best", "last"] = "best",
    objective: Objective | None = None,
) -> torch.Tensor:
    """PGD in the ``eps``-ball of ``norm``; ``alpha`` None means :func:`default_alpha`.

    The sweep's ``pgd-linf`` and ``pgd-l2`` attacks and the trainer's ``pgd``/``fgsm-rs``/``trades``
    examples are all this call (with ``keep="best"`` and ``keep="last"`` respectively).
    """
    eps = float(eps)
    if eps <= 0:
        return x.detach().clone()
    ball = Ball(norm, eps, float(alpha) if alpha is not None else default_alpha(eps, steps))
    x = x.detach()
    return projected_gradient_ascent(
        model, x, y, steps=steps, restarts=restarts,
        draw_start=lambda: ball.uniform_start(x, generator, random_start),
        step=ball.step, keep=keep, objective=objective,
    )
