"""Gaussian (or uniform) noise inside the Linf ball: the random baseline."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_lta import UserError
from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack


@register_attack
class GaussianNoise(Attack):
    r"""Random noise in the Linf eps-ball: the baseline every real attack must beat.

    Not an adversarial attack: the model is never queried (``kind = random``). A model whose
    accuracy drops as much under noise as under PGD is fragile, not attacked; an attack no
    stronger than this noise is broken.

    Distance Measure : Linf

    ``x_adv = clamp(x + clip(n, -eps, eps), 0, 1)`` with ``n ~ N(0, (sigma * eps)^2)`` per entry
    (``distribution='gaussian'``) or ``n ~ U(-eps, eps)`` (``'uniform'``), drawn from the attack's
    seeded generator.

    Arguments:
        sigma (float): standard deviation as a fraction of eps (gaussian only). (Default: 1.0)
        distribution (str): 'gaussian' or 'uniform'. (Default: 'gaussian')

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64 (unused).
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "gaussian-noise"
    threat_model = ThreatModel.LINF
    kind = AttackKind.RANDOM
    randomized = True

    class Params(AttackParams):
        sigma: float = Field(1.0, gt=0, description="standard deviation as a fraction of eps")
        distribution: Literal["gaussian", "uniform"] = "gaussian"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        eps = float(eps)
        gen = self.generator(x.device)
        dist = str(self.params["distribution"]).lower()
        if dist == "gaussian":
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            noise = noise * (float(self.params["sigma"]) * eps)
        elif dist == "uniform":
            noise = (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
        else:
            raise UserError(f"gaussian-noise: distribution {dist!r} is invalid; use 'gaussian' or 'uniform'")
        return (x.detach() + noise.clamp(-eps, eps)).clamp(0.0, 1.0)
