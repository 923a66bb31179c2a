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

        def keep(idx: torch.Tensor, x_adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            """Record the best iterate per sample; return which of ``idx`` are fooled now."""
            loss = F.cross_entropy(logits, y[idx], reduction="none").detach()
            hit = logits.argmax(dim=1) != y[idx]
            take = ~best_hit[idx] & (hit | (loss > best_loss[idx]))
            best[idx[take]] = x_adv[take].detach()
            best_loss[idx[take]] = loss[take]
            best_hit[idx[hit]] = True
            return hit

        def project(delta: torch.Tensor) -> torch.Tensor:
            factor = torch.clamp(eps / _l2(delta).clamp_min(1e-12), max=1.0)
            return delta * factor

        for _ in range(restarts):
            # starts are drawn for the whole batch, so a sample's start does not depend on which
            # other samples are still being attacked
            direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            radius = torch.rand((n,) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype)
            idx = torch.nonzero(~best_hit).squeeze(1)
            if idx.numel() == 0:
                break
            x0 = x[idx]
            if self.params["random_start"]:
                d = direction[idx]
                delta = project(d / _l2(d).clamp_min(1e-12) * radius[idx] * eps)
                x_adv = (x0 + delta).clamp(0.0, 1.0)
            else:
                x_adv = x0.clone()
            for _ in range(steps):
                x_in = x_adv.clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(x_in)
                    loss = F.cross_entropy(logits, y[idx], reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x_in)
                # a fooled sample keeps its first fooling iterate: stop spending gradients on it
                alive = ~keep(idx, x_adv, logits.detach())
                if not bool(alive.any()):
                    idx = idx[:0]
                    break
                idx, x0, x_adv, grad = idx[alive], x0[alive], x_adv[alive], grad[alive]
                x_adv = x_adv + alpha * grad / _l2(grad).clamp_min(1e-12)
                x_adv = (x0 + project(x_adv - x0)).clamp(0.0, 1.0).detach()
            if idx.numel():
                with torch.no_grad():
                    keep(idx, x_adv, model(x_adv))
            if bool(best_hit.all()):
                break
        return best
