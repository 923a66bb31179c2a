"""PGD-Linf: projected gradient descent with random restarts (Madry et al.)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import (
    Attack,
    AttackKind,
    AttackParams,
    ThreatModel,
    projected_gradient_ascent,
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

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        if eps <= 0:
            return x.detach().clone()
        steps = int(self.params["steps"])
        alpha = float(self.params["alpha"]) if self.params["alpha"] is not None else 2.5 * eps / max(steps, 1)
        gen = self.generator(x.device)
        x = x.detach()

        def draw_start():
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            if not self.params["random_start"]:
                return lambda idx: x[idx].clone()
            return lambda idx: (x[idx] + (2 * noise[idx] - 1) * eps).clamp(0.0, 1.0)

        def step(x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            x_adv = x_adv + alpha * grad.sign()
            return torch.max(torch.min(x_adv, x0 + eps), x0 - eps).clamp(0.0, 1.0)

        return projected_gradient_ascent(
            model, x, y, steps=steps, restarts=int(self.params["restarts"]), draw_start=draw_start, step=step
        )
