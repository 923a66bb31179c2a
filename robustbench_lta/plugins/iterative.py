"""The loop every projected-gradient attack shares, for built-in and user plugins alike.

An iterative attack differs from another only in where a restart starts and how one step moves
and projects; the rest is the same and lives here: restarts, cross-entropy gradients, keeping per
sample the best iterate (:class:`BestIterate`), and no more gradients for samples already fooled.
``attacks/pgd_linf.py`` and ``attacks/pgd_l2.py`` are written on :func:`projected_gradient_ascent`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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
        loss = F.cross_entropy(logits, self.y[idx], reduction="none").detach()
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
) -> torch.Tensor:
    """Gradient ascent on the cross-entropy with restarts; returns the best iterate per sample.

    Args:
        model: maps [0,1] images to logits (in eval mode).
        x, y: the clean batch and its labels.
        steps: gradient steps per restart.
        restarts: independent starts; each attacks only the samples no earlier restart fooled.
        draw_start: called once per restart, before anything else is drawn; returns a function
            from the indices of the samples still attacked to their starting points. Drawing for
            the whole batch at once keeps a sample's start independent of which other samples
            are still being attacked, so results do not depend on the batch's composition.
        step: ``step(x_adv, x0, grad) -> next iterate``, already projected into the budget around
            ``x0`` and clipped to [0,1].
    """
    x = x.detach()
    tracker = BestIterate(x, y)
    for _ in range(max(1, restarts)):
        start = draw_start()
        idx = torch.nonzero(~tracker.fooled).squeeze(1)
        if idx.numel() == 0:
            break
        x0, x_adv = x[idx], start(idx)
        for _ in range(steps):
            x_in = x_adv.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                loss = F.cross_entropy(logits, y[idx], reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_in)
            # a fooled sample keeps its first fooling iterate: stop spending gradients on it
            # (eval-mode models treat samples independently, so the others are unaffected)
            alive = ~tracker.update(idx, x_adv, logits.detach())
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
