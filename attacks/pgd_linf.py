"""PGD-Linf: projected gradient descent with random restarts (Madry et al.)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import (
    Attack,
    AttackKind,
    AttackParams,
    ThreatModel,
    margin_objective,
    pgd,
    register_attack,
)


@register_attack
class PGDLinf(Attack):
    r"""PGD (Linf): signed-gradient ascent on the cross-entropy, projected onto the eps-ball.

    'Towards Deep Learning Models Resistant to Adversarial Attacks' [https://arxiv.org/abs/1706.06083]

    Distance Measure : Linf

    Each restart starts at a uniform random point of the eps-ball (``random_start``; drawn from
    the attack's seeded generator), takes ``steps`` steps ``x <- P(x + alpha * sign(grad))`` and is
    evaluated at every iterate. Per sample the result is the first iterate that fools the model;
    if none does, the iterate with the highest loss. So more steps or restarts never make the
    attack weaker, and the clean point (or FGSM-like first step) is not lost to a bad final step.

    Arguments:
        steps (int): gradient steps per restart. (Default: 10)
        alpha (float or None): step size; None means ``2.5 * eps / steps``. (Default: None)
        restarts (int): random restarts, best kept per sample. (Default: 1)
        random_start (bool): start at a random point of the ball instead of x. (Default: True)
        keep (str): ``best`` (above) or ``last``: every sample takes every step and the last
            iterate is returned, as adversarial training generates it. (Default: best)
        loss (str): ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner margin, "PGD-CW"); the
            best iterate of a sample never fooled is still the one with the highest cross-entropy.
            (Default: ce)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "pgd-linf"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True
    randomized = True

    class Params(AttackParams):
        steps: int = Field(10, ge=1, description="gradient steps per restart")
        alpha: float | None = Field(None, gt=0, description="step size; None: 2.5 * eps / steps")
        restarts: int = Field(1, ge=1, description="random restarts, best kept per sample")
        random_start: bool = Field(True, description="start at a random point of the ball")
        keep: Literal["best", "last"] = Field(
            "best", description="best: per sample the first fooling (else highest-loss) iterate, the "
            "evaluation default; last: every step on every sample, the last iterate (Madry et al.; what "
            "adversarial training generates)")
        loss: Literal["ce", "margin"] = Field(
            "ce", description="ce: cross-entropy (Madry et al.); margin: the Carlini-Wagner margin "
            "max_{j!=y} z_j - z_y, which does not saturate (PGD-CW)")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        # the one PGD (robustbench_lta.pgd) that adversarial training also runs (there keep="last")
        return pgd(
            model, x, y, norm="linf", eps=float(eps), steps=int(self.params["steps"]),
            alpha=self.params["alpha"], restarts=int(self.params["restarts"]),
            random_start=bool(self.params["random_start"]), generator=self.generator(x.device),
            keep=self.params["keep"],
            objective=margin_objective(y) if self.params["loss"] == "margin" else None,
        )
