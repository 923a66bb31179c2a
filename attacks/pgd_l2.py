"""PGD-L2: projected gradient descent in the L2 ball with random restarts."""

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


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


@register_attack
class PGDL2(Attack):
    r"""PGD (L2): normalised-gradient ascent on the cross-entropy, projected onto the L2 eps-ball.

    'Towards Deep Learning Models Resistant to Adversarial Attacks' [https://arxiv.org/abs/1706.06083]

    Distance Measure : L2

    Each restart starts at a random point of the ball (random direction, radius ``u * eps`` with
    ``u ~ U(0,1)``, as torchattacks' PGDL2; seeded generator), takes ``steps`` steps
    ``x <- P(x + alpha * g / ||g||_2)`` and is evaluated at every iterate. Per sample the result is
    the first iterate that fools the model, else the one with the highest loss. Clipping to [0,1]
    after the projection only shrinks the perturbation.

    Arguments:
        steps (int): gradient steps per restart. (Default: 10)
        alpha (float or None): step length; None means ``2.5 * eps / steps``. (Default: None)
        restarts (int): random restarts, best kept per sample. (Default: 1)
        random_start (bool): start at a random point of the ball instead of x. (Default: True)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``||x_adv - x||_2 <= eps``.
    """

    name = "pgd-l2"
    threat_model = ThreatModel.L2
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
        n = x.shape[0]

        def project(delta: torch.Tensor) -> torch.Tensor:
            return delta * torch.clamp(eps / _l2(delta).clamp_min(1e-12), max=1.0)

        def draw_start():
            direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            radius = torch.rand((n,) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype)
            if not self.params["random_start"]:
                return lambda idx: x[idx].clone()

            def start(idx: torch.Tensor) -> torch.Tensor:
                d = direction[idx]
                return (x[idx] + project(d / _l2(d).clamp_min(1e-12) * radius[idx] * eps)).clamp(0.0, 1.0)

            return start

        def step(x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            x_adv = x_adv + alpha * grad / _l2(grad).clamp_min(1e-12)
            return (x0 + project(x_adv - x0)).clamp(0.0, 1.0)

        return projected_gradient_ascent(
            model, x, y, steps=steps, restarts=int(self.params["restarts"]), draw_start=draw_start, step=step
        )
