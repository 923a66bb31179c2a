"""PGD-L2: projected gradient descent in the L2 ball with random restarts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, ThreatModel, register_attack


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
    defaults = {"steps": 10, "alpha": None, "restarts": 1, "random_start": True}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        steps, restarts = int(self.params["steps"]), max(1, int(self.params["restarts"]))
        if eps <= 0:
            return x.detach().clone()
        alpha = float(self.params["alpha"]) if self.params["alpha"] is not None else 2.5 * eps / max(steps, 1)
        gen = self.generator(x.device)
        x = x.detach()
        n = x.shape[0]
        best = x.clone()
        best_loss = torch.full((n,), -float("inf"), device=x.device)
        best_hit = torch.zeros(n, dtype=torch.bool, device=x.device)

        def keep(x_adv: torch.Tensor, logits: torch.Tensor) -> None:
            loss = F.cross_entropy(logits, y, reduction="none").detach()
            hit = logits.argmax(dim=1) != y
            take = ~best_hit & (hit | (loss > best_loss))
            best[take] = x_adv[take].detach()
            best_loss[take] = loss[take]
            best_hit.logical_or_(hit)

        def project(delta: torch.Tensor) -> torch.Tensor:
            factor = torch.clamp(eps / _l2(delta).clamp_min(1e-12), max=1.0)
            return delta * factor

        for _ in range(restarts):
            if self.params["random_start"]:
                direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                radius = torch.rand(
                    (n,) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype
                )
                delta = project(direction / _l2(direction).clamp_min(1e-12) * radius * eps)
                x_adv = (x + delta).clamp(0.0, 1.0)
            else:
                x_adv = x.clone()
            for _ in range(steps):
                x_in = x_adv.clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(x_in)
                    loss = F.cross_entropy(logits, y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x_in)
                keep(x_adv, logits.detach())
                x_adv = x_adv + alpha * grad / _l2(grad).clamp_min(1e-12)
                x_adv = (x + project(x_adv - x)).clamp(0.0, 1.0).detach()
            with torch.no_grad():
                keep(x_adv, model(x_adv))
            if bool(best_hit.all()):
                break
        return best
