"""FGM-L2: the one-step L2 attack."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class FGML2(Attack):
    r"""FGM (L2): one step of length eps along the L2-normalised input gradient of the loss.

    'Adversarial Machine Learning at Scale' [https://arxiv.org/abs/1611.01236] (fast gradient
    method, L2 variant; foolbox's ``L2FastGradientAttack``).

    Distance Measure : L2

    ``x_adv = clamp(x + eps * g / ||g||_2, 0, 1)`` with ``g`` the input gradient of the
    cross-entropy. One gradient per batch serves every eps (``multi_eps``). Clipping to [0,1] can
    only shrink the perturbation, so the L2 budget holds. The single-step baseline for L2 sweeps.

    Arguments:
        none (eps comes from the sweep).

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``||x_adv - x||_2 <= eps``.
    """

    name = "fgm-l2"
    threat_model = ThreatModel.L2
    kind = AttackKind.WHITE_BOX
    multi_eps = True

    class Params(AttackParams):
        """No parameters: eps comes from the sweep."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.perturb_many(model, x, y, [eps])[0]

    def perturb_many(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float]
    ) -> list[torch.Tensor]:
        x_in = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        direction = grad / norm
        return [(x + float(eps) * direction).clamp(0.0, 1.0).detach() for eps in eps_list]
