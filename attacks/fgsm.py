"""FGSM: the one-step L-infinity attack."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class FGSM(Attack):
    r"""FGSM: one signed-gradient step of the cross-entropy loss, clipped to [0,1].

    'Explaining and Harnessing Adversarial Examples' [https://arxiv.org/abs/1412.6572]

    Distance Measure : Linf

    ``x_adv = clamp(x + eps * sign(grad_x CE(model(x), y)), 0, 1)``. The gradient is computed once
    per batch and reused for every eps (``multi_eps``), so a sweep over eps costs one backward
    pass. Predictions match ``torchattacks.FGSM`` and foolbox's ``LinfFastGradientAttack``.

    Arguments:
        none (eps comes from the sweep).

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1].
        - y: :math:`(N)` int64 labels.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "fgsm"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    multi_eps = True

    class Params(AttackParams):
        """No parameters: eps comes from the sweep."""

    @staticmethod
    def gradient_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sign of the input gradient of the summed cross-entropy (model parameters untouched)."""
        x_in = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)
        return grad.sign()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.perturb_many(model, x, y, [eps])[0]

    def perturb_many(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]
    ) -> list[torch.Tensor]:
        sign = self.gradient_sign(model, x, y)
        return [(x + float(eps) * sign).clamp(0.0, 1.0).detach() for eps in eps_list]
