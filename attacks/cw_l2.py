"""C&W-L2 via torchattacks."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class CWL2(Attack):
    r"""Carlini & Wagner L2: minimise ``||delta||_2^2 + c * f(x + delta)`` with Adam (torchattacks.CW).

    'Towards Evaluating the Robustness of Neural Networks' [https://arxiv.org/abs/1608.04644]

    Distance Measure : L2 (minimal perturbation; ``bounded = False``, eps is ignored)

    Runs ``torchattacks.CW`` (tanh change of variables, margin loss with confidence ``kappa``,
    fixed ``c``, no binary search). Samples it cannot fool are returned unchanged. The model's
    parameters are frozen during the call (CW calls ``loss.backward()``) and restored after.

    Arguments:
        c (float): weight of the misclassification term. (Default: 1.0)
        kappa (float): confidence margin. (Default: 0)
        steps (int): Adam steps. (Default: 50)
        lr (float): Adam learning rate. (Default: 0.01)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1].
    """

    name = "cw-l2"
    threat_model = ThreatModel.L2
    kind = AttackKind.WHITE_BOX
    bounded = False
    iterative = True

    class Params(AttackParams):
        c: float = Field(1.0, gt=0, description="weight of the misclassification term")
        kappa: float = Field(0.0, ge=0, description="confidence margin")
        steps: int = Field(50, ge=1, description="optimisation steps")
        lr: float = Field(0.01, gt=0, description="Adam learning rate")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        p = self.params
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            attack = torchattacks.CW(
                model, c=float(p["c"]), kappa=float(p["kappa"]), steps=int(p["steps"]), lr=float(p["lr"])
            )
            out = attack(x.detach(), y)
        return out.detach().to(device=x.device, dtype=x.dtype).clamp(0.0, 1.0)
