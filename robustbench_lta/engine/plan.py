"""The sweep plan: which cells (model x attack x eps-group) to run, in which order, under which key.

A cell is the unit of resumption. Its key hashes everything that decides its result (model source
and weights hash, dataset and sample selection, attack name, parameters and seed, eps, accounting),
so a finished cell is reused only by a sweep that would compute exactly the same thing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..plugins.base import Attack, AttackKind, ThreatModel


@dataclass(frozen=True)
class AttackPlan:
    """One attack as the sweep runs it: its results label, registry name, parameters and eps list."""

    label: str
    name: str
    params: dict[str, Any]
    eps: tuple[float, ...]  # [0,1] scale, ascending; (inf,) for unbounded attacks
    prototype: Attack  # an instance built once: its traits (adapters set them per instance)
    user_instance: bool = False  # a user-supplied instance (Python API): copied per cell, not rebuilt

    @property
    def bounded(self) -> bool:
        return bool(self.prototype.bounded)

    @property
    def multi_eps(self) -> bool:
        return bool(self.prototype.multi_eps)

    @property
    def norm(self) -> str:
        return ThreatModel(self.prototype.threat_model).value

    @property
    def kind(self) -> str:
        return AttackKind(self.prototype.kind).value

    @property
    def iterative(self) -> bool:
        return bool(self.prototype.iterative)


@dataclass(frozen=True)
class Cell:
    model: str
    attack: AttackPlan
    eps: tuple[float, ...]
    key: str
    order: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return f"{_slug(self.model)}__{_slug(self.attack.label)}__{self.key[:16]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "x"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def cell_key(model_fingerprint: dict[str, Any], data_fingerprint: dict[str, Any], attack: AttackPlan,
             eps: tuple[float, ...], seed: int, accounting: str) -> str:
    payload = {
        "model": model_fingerprint,
        "data": data_fingerprint,
        "attack": {"name": attack.name, "label": attack.label, "params": attack.params},
        "eps": [repr(float(e)) for e in eps],
        "seed": seed,
        "accounting": accounting,
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def eps_groups(attack: AttackPlan) -> list[tuple[float, ...]]:
    """Unbounded and multi-eps attacks run as one cell; others one cell per eps, ascending."""
    if not attack.bounded:
        return [(math.inf,)]
    if attack.multi_eps:
        return [attack.eps]
    return [(e,) for e in attack.eps]


def plan_model_cells(model: str, model_fingerprint: dict[str, Any], data_fingerprint: dict[str, Any],
                     attacks: list[AttackPlan], seed: int, accounting: str) -> list[Cell]:
    cells: list[Cell] = []
    for attack in attacks:
        for group in eps_groups(attack):
            key = cell_key(model_fingerprint, data_fingerprint, attack, group, seed, accounting)
            cells.append(Cell(model=model, attack=attack, eps=group, key=key, order=len(cells)))
    return cells
