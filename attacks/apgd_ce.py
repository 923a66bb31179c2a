"""APGD-CE (Linf) via torchattacks."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class APGDCE(Attack):
    r"""APGD-CE: step-size-free PGD with momentum on the cross-entropy (first stage of AutoAttack).

    'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure : Linf

    Runs ``torchattacks.APGD(norm='Linf', loss='ce')`` with the attack's seed (random start drawn
    from torch's global RNG, forked and restored around the call). The step size halves on
    plateaus, so no ``alpha`` to tune; the best point per sample is returned.

    Arguments:
        steps (int): iterations. (Default: 100)
        n_restarts (int): random restarts. (Default: 1)
        rho (float): step-size decrease condition. (Default: 0.75)
        eot_iter (int): gradient samples per step (for randomised models). (Default: 1)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "apgd-ce"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True
    randomized = True

    class Params(AttackParams):
        steps: int = Field(100, ge=1, description="iterations")
        n_restarts: int = Field(1, ge=1, description="random restarts")
        rho: float = Field(0.75, gt=0, le=1, description="step-size decrease condition")
        eot_iter: int = Field(1, ge=1, description="gradient samples per step")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        p = self.params
        if float(eps) <= 0:
            return x.detach().clone()
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            attack = torchattacks.APGD(
                model,
                norm="Linf",
                eps=float(eps),
                steps=int(p["steps"]),
                n_restarts=int(p["n_restarts"]),
                seed=self.seed,
                loss="ce",
                eot_iter=int(p["eot_iter"]),
                rho=float(p["rho"]),
            )
            out = attack(x.detach(), y)
        out = torch.max(torch.min(out.detach().to(x.dtype), x + float(eps)), x - float(eps))
        return out.clamp(0.0, 1.0)
