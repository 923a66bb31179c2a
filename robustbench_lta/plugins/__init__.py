"""Attack plugins: the interface, the registry and discovery, output verification, adapters.

Everything a plugin author needs is importable from here::

    from robustbench_lta.plugins import Attack, AttackKind, ThreatModel, register_attack
"""

from __future__ import annotations

from .applicability import NotApplicable, attention_of, has_attention
from .base import Attack, AttackKind, AttackParams, ThreatModel, validate_attack_params
from .iterative import Ball, BestIterate, margin_objective, pgd, projected_gradient_ascent
from .registry import AttackInfo, discover, get_attack, get_attack_class, list_attacks, register_attack
from .verify import Verification, perturbation_norms, verify_batch

__all__ = [
    "Attack",
    "AttackInfo",
    "AttackKind",
    "AttackParams",
    "Ball",
    "BestIterate",
    "ThreatModel",
    "NotApplicable",
    "Verification",
    "attention_of",
    "discover",
    "get_attack",
    "get_attack_class",
    "has_attention",
    "list_attacks",
    "margin_objective",
    "perturbation_norms",
    "pgd",
    "projected_gradient_ascent",
    "register_attack",
    "validate_attack_params",
    "verify_batch",
]
