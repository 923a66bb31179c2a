"""Which attacks count as strong, and how attack families rank when two break the same samples.

Defined once, here in the plugins layer, because two layers need the same answer: the engine picks
the attack whose adversarial attention maps the report shows (engine/model_pass.py), and the report
names the strongest attack and says when only weak ones ran (reporting/protocol.py). A different
ranking in each place would let the figure show a weaker attack than the one page 1 names.
"""

from __future__ import annotations

from typing import Any

_AUTOATTACK = "AutoAttack"
#: PGD/APGD with at least this many steps counts as a strong attack (with AutoAttack)
STRONG_STEPS = 50
#: single-step attacks and noise: the weakest family, never named the strongest on a tie
ONE_STEP = ("fgsm", "fgm", "noise", "gaussian")


def attack_steps(name: str, params: dict[str, Any]) -> int | None:
    """The attack's step count: its own parameter, else its class default (None if it has none)."""
    for key in ("steps", "max_iter", "nb_iter", "n_iter"):
        if key in params:
            try:
                return int(params[key])
            except (TypeError, ValueError):
                return None
    try:
        from .registry import get_attack_class

        defaults = getattr(get_attack_class(name, params), "defaults", None) or {}
    except Exception:  # an attack this installation does not know: strength unknown, treated as weak
        return None
    value = defaults.get("steps")
    return int(value) if isinstance(value, int | float) else None


def attack_strength(name: str, params: dict[str, Any] | None = None) -> str | None:
    """Why ``name`` counts as a strong attack ("AutoAttack", "apgd-ce, 100 steps"), or None if weak."""
    params = dict(params or {})
    low = name.lower()
    if "autoattack" in low:
        subset = params.get("attacks")  # a subset of the standard version's attacks
        return f"{_AUTOATTACK} ({' + '.join(map(str, subset))} only)" if subset else _AUTOATTACK
    if "pgd" in low:  # PGD and APGD (pgd-linf, apgd-ce, ta:PGD, ta:APGD, fb:LinfPGD, ...)
        steps = attack_steps(name, params)
        if steps is not None and steps >= STRONG_STEPS:
            return f"{name}, {steps} steps"
    return None


def strength_tag(why: str | None) -> str:
    """The short tag the report puts beside an attack's name from :func:`attack_strength`'s answer:
    "weak", "strong", or for a subset of AutoAttack "strong; apgd-ce + apgd-t only" (strong, but not
    the standard evaluation: the tag says which part ran)."""
    if not why:
        return "weak"
    prefix = f"{_AUTOATTACK} ("
    return f"strong; {why[len(prefix):-1]}" if why.startswith(prefix) and why.endswith(")") else "strong"


def family_rank(name: str, params: dict[str, Any] | None = None) -> int:
    """0: a strong attack, 1: any other multi-step attack, 2: single-step attacks and noise.

    Lower is stronger. The report uses it to break ties in robust accuracy; the engine, which has no
    results yet, uses it alone to pick the attention figure's attack.
    """
    if attack_strength(name, params):
        return 0
    low = name.lower()
    return 2 if any(k in low for k in ONE_STEP) and "pgd" not in low else 1


def strongest_family(attacks: list[tuple[str, str, dict[str, Any], int]]) -> str | None:
    """The label of the strongest of ``(label, name, params, positive budgets)``, or None if empty.

    :func:`family_rank` first; within a family, more budgets (a figure can show several), then the
    order given. The engine picks the attention figure's attack with it before any result exists, and
    the report checks a stored figure against it, so both name the same attack.
    """
    if not attacks:
        return None
    ranked = sorted(enumerate(attacks), key=lambda t: (family_rank(t[1][1], t[1][2]), -t[1][3], t[0]))
    return ranked[0][1][0]
