"""The sweep plan: cells (model x attack x eps chain) and the units of work they split into.

A **cell** is one attack on one model over its eps list, ascending (the chain along which
worst-case accounting carries broken samples). Its key hashes everything that decides its result
(model weights sha256 and architecture, data fingerprint, attack name and parameters, eps, seed,
accounting): content, never a path, so the same weights at another mount point are reused.

A **unit** is a cell restricted to a contiguous shard of sample positions ``[start, stop)``: the
thing an executor runs. Shards already stored under the cell's key are skipped, whatever shard size
wrote them, so resuming with another shard size or executor reuses everything that is there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SweepConfig
from ..plugins.base import Attack, AttackKind, ThreatModel
from ..plugins.registry import discover, get_attack


@dataclass(frozen=True)
class AttackPlan:
    """One attack as the sweep runs it: its results label, registry name, parameters and eps list."""

    label: str
    name: str
    params: dict[str, Any]
    eps: tuple[float, ...]  # [0,1] scale, ascending; (inf,) for unbounded attacks
    prototype: Attack  # an instance built once: its traits (adapters set them per instance)
    user_instance: bool = False  # a user-supplied instance (Python API): copied per unit, not rebuilt

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
    def runs_under_amp(self) -> bool:
        """Whether a sweep's ``amp`` applies to this attack: bounded gradient attacks only.

        Query-based and minimal-norm attacks decide on logit margins and step sizes that bf16 rounds
        away: measured (benchmarks/bench_amp.py, an FGSM-RS VGG on 64 CIFAR-10 images, bf16 on a Xeon)
        Boundary left 26.6 % robust vs 0.0 % in float32, Square (500 queries) 40.6 % vs 31.2 %,
        DeepFool 9.4 % vs 1.6 %, while PGD, FGSM and APGD-CE stayed within one sample. These run in
        float32 whatever ``amp`` says; the amp-parity sanity row checks the gradient attacks.
        """
        return self.bounded and self.kind == AttackKind.WHITE_BOX.value

    @property
    def iterative(self) -> bool:
        return bool(self.prototype.iterative)

    @property
    def chain(self) -> tuple[float, ...]:
        """The budgets one cell runs: all of them ascending, or ``(inf,)`` for unbounded attacks."""
        return self.eps if self.bounded else (float("inf"),)


@dataclass(frozen=True)
class Cell:
    model: str
    model_sha256: str
    attack: AttackPlan
    key: str
    # cascade accounting: the cells of the same model and norm that run before this one; their
    # broken samples are not attacked here (their keys are part of this cell's key)
    upstream: tuple[Cell, ...] = ()

    @property
    def id(self) -> str:
        return f"{_slug(self.model)}__{_slug(self.attack.label)}__{self.key[:16]}"


@dataclass(frozen=True)
class Unit:
    cell: Cell
    start: int
    stop: int

    @property
    def id(self) -> str:
        return f"{self.start:09d}-{self.stop:09d}"

    @property
    def size(self) -> int:
        return self.stop - self.start


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "x"


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def cell_key(model_fingerprint: Mapping[str, Any], data_fingerprint: Mapping[str, Any], attack: AttackPlan,
             seed: int, accounting: str, upstream: Sequence[str] = (), amp: str = "off") -> str:
    payload: dict[str, Any] = {
        "model": dict(model_fingerprint),
        "data": dict(data_fingerprint),
        "attack": {"name": attack.name, "params": attack.params},
        "eps": [repr(float(e)) for e in attack.chain],
        "seed": seed,
        "accounting": accounting,
        "engine": 2,
    }
    if upstream:
        payload["upstream"] = list(upstream)
    if amp != "off" and attack.runs_under_amp:  # other numerics, other cell; float32 keys unchanged
        payload["amp"] = amp
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


def cascade_rank(attack: AttackPlan) -> int:
    """Cost class for cascade accounting: single-step or random 0, iterative white-box 1, black-box 2."""
    if attack.kind in (AttackKind.SCORE.value, AttackKind.DECISION.value):
        return 2
    return 1 if attack.iterative and attack.kind == AttackKind.WHITE_BOX.value else 0


def cascade_order(attacks: Sequence[AttackPlan]) -> list[AttackPlan]:
    """Bounded attacks cheapest first (config order within a cost class), then the unbounded ones."""
    bounded = sorted((a for a in attacks if a.bounded), key=cascade_rank)  # stable: config order kept
    return bounded + [a for a in attacks if not a.bounded]


def plan_cells(models: Sequence[tuple[str, Mapping[str, Any]]], data_fingerprint: Mapping[str, Any],
               attacks: Sequence[AttackPlan], seed: int, accounting: str, amp: str = "off") -> list[Cell]:
    """Every (model, attack) cell, models in order, attacks in config order.

    Under cascade accounting the attacks come in :func:`cascade_order`, and each bounded cell's
    ``upstream`` holds the earlier bounded cells of its model and norm (unbounded attacks, whose
    figure is the norm they find, run on every sample and feed no cascade).
    """
    if accounting != "cascade":
        return [Cell(model=label, model_sha256=str(fp.get("sha256", "")), attack=a,
                     key=cell_key(fp, data_fingerprint, a, seed, accounting, amp=amp))
                for label, fp in models for a in attacks]
    cells: list[Cell] = []
    for label, fp in models:
        earlier: dict[str, list[Cell]] = {}
        for a in cascade_order(attacks):
            up = tuple(earlier.get(a.norm, ())) if a.bounded else ()
            cell = Cell(model=label, model_sha256=str(fp.get("sha256", "")), attack=a,
                        key=cell_key(fp, data_fingerprint, a, seed, accounting, [c.key for c in up], amp),
                        upstream=up)
            if a.bounded:
                earlier.setdefault(a.norm, []).append(cell)
            cells.append(cell)
    return cells


def shards(n: int, shard_size: int | None) -> list[tuple[int, int]]:
    size = n if not shard_size else max(1, shard_size)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def plan_units(cell: Cell, n: int, shard_size: int | None, stored: Sequence[tuple[int, int]]) -> list[Unit]:
    """The units still to run for ``cell``: the sample positions no stored unit covers."""
    covered = [False] * n if n <= 10_000_000 else None
    if covered is None:  # pragma: no cover - absurd sizes: trust only an exact shard grid
        done = set(stored)
        return [Unit(cell, s, e) for s, e in shards(n, shard_size) if (s, e) not in done]
    for s, e in stored:
        for i in range(max(0, s), min(n, e)):
            covered[i] = True
    units: list[Unit] = []
    for s, e in shards(n, shard_size):
        i = s
        while i < e:
            if covered[i]:
                i += 1
                continue
            j = i
            while j < e and not covered[j]:
                j += 1
            units.append(Unit(cell, i, j))
            i = j
    return units


def select_stored(stored: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """A non-overlapping subset of stored shard ranges (greedy by start): each sample counted once."""
    out: list[tuple[int, int]] = []
    end = -1
    for s, e in sorted(stored):
        if s >= end:
            out.append((s, e))
            end = e
    return out


def build_attack_plans(cfg: SweepConfig, instances: Mapping[str, Attack] | None = None) -> list[AttackPlan]:
    """Load plugins, build every attack once (its parameters are validated now, before any work)."""
    discover([Path(p) for p in cfg.plugins])
    plans = []
    default_eps = tuple(cfg.eps_unit())
    for spec in cfg.attacks:
        label = spec.label or spec.name
        inst = (instances or {}).get(label)
        proto = inst if inst is not None else get_attack(spec.name, **spec.params)
        eps = tuple(sorted({e / cfg.eps_scale for e in spec.eps})) if spec.eps is not None else default_eps
        plans.append(AttackPlan(label=label, name=spec.name, params=dict(spec.params), eps=eps,
                                prototype=proto, user_instance=inst is not None))
    return plans
