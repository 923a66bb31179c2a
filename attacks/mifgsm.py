"""MI-FGSM: momentum iterative FGSM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class MIFGSM(Attack):
    r"""MI-FGSM: iterative FGSM with a momentum term on the L1-normalised gradient.

    'Boosting Adversarial Attacks with Momentum' [https://arxiv.org/abs/1710.06081]

    Distance Measure : Linf

    ``g <- decay * g + grad / mean|grad|`` (per sample), ``x <- P(x + alpha * sign(g))``, starting
    from x (no randomness). Every iterate is evaluated; per sample the first that fools the
    model is kept, else the one with the highest loss.

    Arguments:
        steps (int): number of iterations. (Default: 10)
        alpha (float or None): step size; None means ``eps / steps``. (Default: None)
        decay (float): momentum factor. (Default: 1.0)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "mifgsm"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True

    class Params(AttackParams):
        steps: int = Field(10, ge=1, description="iterations")
        alpha: float | None = Field(None, gt=0, description="step size; None: eps / steps")
        decay: float = Field(1.0, ge=0, description="momentum factor")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        steps = max(1, int(self.params["steps"]))
        if eps <= 0:
            return x.detach().clone()
        alpha = float(self.params["alpha"]) if self.params["alpha"] is not None else eps / steps
        decay = float(self.params["decay"])
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

        momentum = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(steps):
            x_in = x_adv.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_in)
            keep(x_adv, logits.detach())
            scale = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            momentum = decay * momentum + grad / scale
            x_adv = x_adv + alpha * momentum.sign()
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0.0, 1.0).detach()
        with torch.no_grad():
            keep(x_adv, model(x_adv))
        return best
