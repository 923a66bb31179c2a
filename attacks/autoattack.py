"""AutoAttack (standard, Linf) via torchattacks."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class AutoAttack(Attack):
    r"""AutoAttack: APGD-CE, APGD-T, FAB-T and Square in sequence, each on the survivors.

    'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure : Linf

    Runs ``torchattacks.AutoAttack(norm='Linf', version=...)`` with the attack's seed; the number
    of classes is read from one forward pass. torch's global RNG is forked and restored around the
    call. The reference evaluation of RobustBench; slow (Square alone uses 5000 queries).

    Arguments:
        version (str): 'standard', 'plus' or 'rand'. (Default: 'standard')

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "autoattack"
    threat_model = ThreatModel.LINF
    kind = AttackKind.WHITE_BOX
    iterative = True
    randomized = True
    defaults = {"version": "standard"}

    class Params(AttackParams):
        version: Literal["standard", "plus", "rand"] = "standard"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        if float(eps) <= 0:
            return x.detach().clone()
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            attack = torchattacks.AutoAttack(
                model,
                norm="Linf",
                eps=float(eps),
                version=str(self.params["version"]),
                n_classes=n_classes,
                seed=self.seed,
            )
            out = attack(x.detach(), y)
        out = torch.max(torch.min(out.detach().to(x.dtype), x + float(eps)), x - float(eps))
        return out.clamp(0.0, 1.0)
