"""Square Attack (Linf, score-based) via torchattacks."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class Square(Attack):
    r"""Square Attack: query-efficient black-box random search over square-shaped updates.

    'Square Attack: a query-efficient black-box adversarial attack via random search'
    [https://arxiv.org/abs/1912.00049]

    Distance Measure : Linf (uses only the model's scores: ``kind = black-box-score``)

    Runs ``torchattacks.Square`` (margin loss) with the attack's seed; torchattacks reseeds torch's
    global RNG, which is forked and restored around the call so the caller's stream is untouched.
    Useful as a gradient-free check for gradient masking: if Square beats PGD, gradients lie.

    Arguments:
        n_queries (int): query budget per sample. (Default: 5000)
        n_restarts (int): restarts. (Default: 1)
        p_init (float): initial fraction of pixels changed per square. (Default: 0.8)
        loss (str): 'margin' or 'ce'. (Default: 'margin')

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "square"
    threat_model = ThreatModel.LINF
    kind = AttackKind.SCORE
    iterative = True
    randomized = True

    class Params(AttackParams):
        n_queries: int = Field(5000, ge=1, description="query budget per sample")
        n_restarts: int = Field(1, ge=1, description="restarts")
        p_init: float = Field(0.8, gt=0, le=1, description="initial fraction of pixels per square")
        loss: Literal["margin", "ce"] = "margin"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        p = self.params
        if float(eps) <= 0:
            return x.detach().clone()
        with self.frozen(model), self.global_rng(x.device), torch.no_grad():
            attack = torchattacks.Square(
                model,
                norm="Linf",
                eps=float(eps),
                n_queries=int(p["n_queries"]),
                n_restarts=int(p["n_restarts"]),
                p_init=float(p["p_init"]),
                loss=str(p["loss"]),
                resc_schedule=True,
                seed=self.seed,
            )
            out = attack(x.detach(), y)
        # Square steps by exactly +-eps; keep float rounding from leaving the ball.
        out = torch.max(torch.min(out.detach().to(x.dtype), x + float(eps)), x - float(eps))
        return out.clamp(0.0, 1.0)
