"""AutoAttack, the authors' reference code (``pyautoattack``), L-inf and L2.

torchattacks' port stays reachable as ``ta:AutoAttack``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from robustbench_lta import UserError
from robustbench_lta.plugins import Attack, AttackKind, AttackParams, ThreatModel, register_attack

_VERSIONS = ("standard", "plus", "rand")
#: the standard version's attacks, in the order it runs them
_STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: pyautoattack calls ``.view`` on
    input gradients, which fails on the channels_last (NHWC) gradients of an NHWC model."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _Contiguous(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGrad.apply(x.contiguous())).contiguous()


class _AutoAttackBase(Attack):
    kind = AttackKind.WHITE_BOX
    iterative = True
    randomized = True
    _norm = "Linf"

    class Params(AttackParams):
        version: Literal["standard", "plus", "rand"] = "standard"
        attacks: list[str] | None = None

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        if self.params["version"] not in _VERSIONS:
            raise UserError(f"attack '{self.name}': version must be one of {', '.join(_VERSIONS)}, "
                            f"got {self.params['version']!r}")
        chosen = self.params.get("attacks")
        if chosen is not None:
            unknown = [a for a in chosen if a not in _STANDARD_ATTACKS]
            if self.params["version"] != "standard" or unknown or not chosen:
                raise UserError(f"attack '{self.name}': attacks must be a non-empty subset of the standard "
                                f"version's {', '.join(_STANDARD_ATTACKS)} (with version 'standard'), "
                                f"got {chosen!r}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        try:
            from pyautoattack import AutoAttack
        except ImportError:
            raise UserError(f"attack '{self.name}' needs the authors' AutoAttack: "
                            "pip install 'robustbench-lta[autoattack]' (or use ta:AutoAttack)") from None
        if float(eps) <= 0 or len(x) == 0:
            return x.detach().clone()
        wrapped = _Contiguous(model)
        x0 = x.detach().contiguous()
        with self.frozen(model), self.global_rng(x.device), torch.enable_grad():
            with torch.no_grad():
                n_classes = int(wrapped(x0[:1]).shape[1])
            chosen = self.params.get("attacks")
            if chosen is None:
                attack = AutoAttack(wrapped, norm=self._norm, eps=float(eps),
                                    version=str(self.params["version"]), seed=self.seed, device=x.device)
            else:
                attack = _standard_subset(wrapped, self._norm, float(eps), self.seed, x.device, list(chosen))
            # the targeted attacks aim at the top 9 other classes; fewer classes: all of them
            attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, n_classes - 1)
            attack.fab.n_target_classes = min(attack.fab.n_target_classes, n_classes - 1)
            logger = logging.getLogger("auto-attack")
            level = logger.level
            logger.setLevel(logging.ERROR)  # its checks log advice as warnings; the engine has its own
            try:
                out, _ = attack.run_standard_evaluation(x0, y.detach(), batch_size=len(x0))
            finally:
                logger.setLevel(level)
        out = out.detach().to(x.dtype)
        delta = out - x
        if self._norm == "Linf":
            delta = delta.clamp(-float(eps), float(eps))
        else:  # float rounding must not leave the L2 ball
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            delta = delta * (float(eps) / norms).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0)


def _standard_subset(model: nn.Module, norm: str, eps: float, seed: int, device: torch.device,
                     attacks: list[str]) -> Any:
    """The standard version restricted to ``attacks``: the package's 'custom' version keeps its
    constructor's settings (5 restarts for APGD and FAB), so the standard ones are set here, as the
    package's ``_set_version('standard')`` sets them for L-inf and L2."""
    from pyautoattack import AutoAttack

    order = [a for a in _STANDARD_ATTACKS if a in attacks]
    attack = AutoAttack(model, norm=norm, eps=eps, version="custom", attacks=order, seed=seed, device=device)
    attack.apgd.n_restarts = 1
    attack.apgd_targeted.n_restarts = 1
    attack.apgd_targeted.n_target_classes = 9
    attack.fab.n_restarts = 1
    attack.fab.n_target_classes = 9
    attack.square.n_queries = 5000
    return attack


@register_attack
class AutoAttackLinf(_AutoAttackBase):
    r"""AutoAttack (L-inf), the authors' code: APGD-CE, APGD-T, FAB-T and Square on the survivors.

    'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure : Linf

    Runs ``pyautoattack.AutoAttack(norm='Linf', version=...)`` (Croce and Hein's package, the
    evaluation RobustBench reports) with the attack's seed; torch's global RNG is forked and restored
    around the call. Samples it cannot break come back unchanged. torchattacks' port is ``ta:AutoAttack``.

    Arguments:
        version (str): 'standard' (APGD-CE, APGD-T, FAB-T, Square), 'plus' (more restarts and
            attacks) or 'rand' (APGD with EOT for randomised defences). (Default: 'standard')
        attacks (list[str]): a subset of the standard version's attacks, run with its settings
            (e.g. ``[apgd-ce, apgd-t]``, the two that break almost every sample the full version
            breaks, at about a third of its cost on robust samples); results then are not
            RobustBench's standard evaluation, and the report says so. (Default: all four)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``|x_adv - x|_inf <= eps``.
    """

    name = "autoattack"
    threat_model = ThreatModel.LINF
    _norm = "Linf"


@register_attack
class AutoAttackL2(_AutoAttackBase):
    r"""AutoAttack (L2), the authors' code: APGD-CE, APGD-T, FAB-T and Square on the survivors.

    'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure : L2

    As ``autoattack`` with ``norm='L2'``: the budget is the L2 norm of the perturbation.

    Arguments:
        version (str): 'standard', 'plus' or 'rand'. (Default: 'standard')
        attacks (list[str]): a subset of the standard version's attacks, as for ``autoattack``.
            (Default: all four)

    Shape:
        - x: :math:`(N, C, H, W)` floats in [0, 1]; y: :math:`(N)` int64.
        - output: :math:`(N, C, H, W)` in [0, 1], ``||x_adv - x||_2 <= eps``.
    """

    name = "autoattack-l2"
    threat_model = ThreatModel.L2
    _norm = "L2"
