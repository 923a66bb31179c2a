"""The training threat model of each compared model, and budgets the sweep evaluated beyond it.

A checkpoint's card (robustbench_lta/training/trainer.py) records ``threat_model``: ``None`` for
standard training, else the adversarial-training recipe (``label``, ``method``, ``norm``, ``eps``,
``eps_scale``, ``eps_01``, ...). Cards written before adversarial training existed have no such key,
and outside models (zoo, timm, ...) say nothing about how they were trained, so both read as "not
recorded" rather than being guessed at. Everything here reads the cards the sweep stored in its
manifest; the report never loads a model.

- :func:`training_threat`: "PGD-AT, Linf 8/255", "standard training" or "... not recorded".
- :func:`threat_summary`: the phrase page 1 shows next to each model's selection phrase.
- :func:`budget_warnings`: one sentence per adversarially trained model that the sweep also
  attacked with a larger budget in its training norm, or in another norm.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..config import TRAINING_METHOD_NAMES
from ..results import EPS_TOL, STATUS_OK, WORST_CASE
from ..training.selection import unwrap_card

NOT_RECORDED = "training threat model not recorded"
STANDARD = "standard training"
NORM_TEXT = {"linf": "Linf", "l2": "L2", "l0": "L0"}  # as the card's own label names norms
_REL_TOL = 1e-3  # a card may store eps_01 rounded (0.03137 for 8/255): compare budgets loosely


def _recorded(card: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """(whether the card records a training threat model, the threat model dict or None for standard)."""
    inner = unwrap_card(card)
    if not isinstance(inner, dict) or "threat_model" not in inner:
        return False, None
    tm = inner["threat_model"]
    if tm is None or (isinstance(tm, dict) and tm.get("method") == "none"):
        return True, None
    return (True, tm) if isinstance(tm, dict) else (False, None)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _eps_text(eps01: float, scale: float) -> str:
    """A [0,1]-scale budget in the card's own units: ``8/255``, or ``0.5`` when the scale is 1."""
    if scale == 1:
        return f"{eps01:.4g}"
    return f"{round(eps01 * scale, 4):g}/{scale:g}"


def _budget(tm: dict[str, Any]) -> tuple[str, float, float] | None:
    """(norm, eps on the [0,1] scale, the card's eps_scale) of a recorded threat model, or None."""
    norm = str(tm.get("norm") or "").lower()
    eps, scale = _num(tm.get("eps")), _num(tm.get("eps_scale"))
    # eps / eps_scale is exact; eps_01 may have been rounded when the card was written
    eps01 = eps / scale if eps is not None and scale else _num(tm.get("eps_01"))
    if norm not in NORM_TEXT or eps01 is None:
        return None
    return norm, eps01, scale or 255.0


def _method(tm: dict[str, Any]) -> str:
    label = str(tm.get("label") or "")
    if ", " in label:
        return label.rsplit(", ", 1)[0]  # "TRADES (beta 6), Linf 8/255" -> "TRADES (beta 6)"
    method = str(tm.get("method") or "?")
    return TRAINING_METHOD_NAMES.get(method, method)


def _threat_label(tm: dict[str, Any]) -> str:
    if tm.get("label"):
        return str(tm["label"])  # the trainer's own wording (AdversarialSpec.label)
    budget = _budget(tm)
    where = f"{NORM_TEXT[budget[0]]} {_eps_text(budget[1], budget[2])}" if budget else "budget not recorded"
    return f"{_method(tm)}, {where}"


def _zoo_threat(card: dict[str, Any] | None) -> str | None:
    """The RobustBench leaderboard a zoo model is listed under (e.g. "Linf 8/255"), or None.

    The leaderboard is the threat model the model is *evaluated* under; zoo cards carry no training
    recipe (the leaderboards also list standard-trained baselines), so this is said, not assumed.
    """
    source = str((card or {}).get("source") or "")
    if not source.startswith("robustbench:"):
        return None
    parts = source.split(":", 1)[1].split("/")
    if len(parts) < 3:
        return None
    norm = parts[1].lower()
    name = NORM_TEXT.get(norm, parts[1])
    published = (card or {}).get("published") or {}
    eps = _num(published.get("eps")) if isinstance(published, dict) else None
    return f"{name} {_eps_text(eps, 255.0 if norm == 'linf' else 1.0)}" if eps is not None else name


def training_threat(card: dict[str, Any] | None) -> str:
    """The threat model a model was trained against, from its card as the sweep's manifest stores it.

    "PGD-AT, Linf 8/255" (adversarial training), "standard training" (the card says none), or
    "training threat model not recorded" (older cards, outside models; a RobustBench zoo model adds
    the leaderboard it is listed under).
    """
    recorded, tm = _recorded(card)
    if recorded:
        return STANDARD if tm is None else _threat_label(tm)
    zoo = _zoo_threat(card)
    return f"{NOT_RECORDED} (RobustBench {zoo} leaderboard entry)" if zoo else NOT_RECORDED


def threat_summary(card: dict[str, Any] | None) -> str:
    """Page 1's phrase: "training: PGD-AT, Linf 8/255", "standard training" or "... not recorded"."""
    recorded, tm = _recorded(card)
    text = training_threat(card)
    return f"training: {text}" if recorded and tm is not None else text


def budget_warnings(cards: dict[str, Any], evaluated: pd.DataFrame) -> list[str]:
    """One sentence per adversarially trained model evaluated beyond its training threat model.

    ``cards``: model label -> card (as :func:`~.protocol.model_cards` gives them); ``evaluated``: the
    sweep's summary rows (columns ``model``, ``attack``, ``norm``, ``eps`` on the [0,1] scale and
    ``status``). A model is flagged when an ``ok`` cell attacked it in its training norm at a budget
    larger than its training eps, or in another norm at all (eps 0 is clean accuracy, not an attack).
    Standard-trained models and cards that record nothing are not flagged: nothing was promised.
    """
    out: list[str] = []
    if evaluated is None or evaluated.empty:
        return out
    rows = evaluated[evaluated["attack"] != WORST_CASE]  # worst-case rows repeat the attacks' budgets
    if "status" in rows:
        rows = rows[rows["status"] == STATUS_OK]  # a failed cell shows no accuracy to misread
    for label, card in sorted(cards.items()):
        recorded, tm = _recorded(card)
        budget = _budget(tm) if recorded and tm is not None else None
        if budget is None:
            continue
        norm, train_eps, scale = budget
        tol = max(EPS_TOL, _REL_TOL * train_eps)
        mine = rows[rows["model"] == label]
        eps = mine["eps"].astype(float)
        same = mine["norm"].astype(str) == norm
        larger = sorted(set(eps[same & eps.map(math.isfinite) & (eps > train_eps + tol)]))
        # an unbounded (minimal-perturbation) attack in the training norm reports sizes, not accuracy
        # at a budget: only other norms count from those
        other = sorted(set(mine["norm"].astype(str)[~same & (eps > EPS_TOL)]))
        parts = []
        if larger:
            parts.append(f"at {NORM_TEXT[norm]} " + ", ".join(_eps_text(e, scale) for e in larger))
        named = [NORM_TEXT.get(n, n) for n in other if n != "none"]
        if named:
            parts.append("under " + ", ".join(named))
        if "none" in other:
            parts.append("without a norm bound")
        if not parts:
            continue
        out.append(
            f"{label} was trained against {NORM_TEXT[norm]} {_eps_text(train_eps, scale)} ({_method(tm)}); "
            f"this sweep also evaluates it {' and '.join(parts)}: robustness there was not trained for, "
            "so low accuracy is expected."
        )
    return out
