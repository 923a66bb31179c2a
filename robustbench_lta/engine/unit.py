"""One unit of work: model + attack + eps chain + shard of samples -> per-sample records.

:func:`run_attack_unit` is the pure function every executor calls. In order:

1. a clean forward over the shard (predictions, and attention maps for attention models);
2. the clean-correct samples go through the attack, budgets ascending; in worst-case accounting only
   the samples still unbroken at the previous budget are attacked (iterative attacks) or evaluated
   (one-shot multi-budget attacks: one gradient for every budget); a sample broken at a smaller
   budget carries that adversarial example's record to every larger one (it lies in every larger
   ball);
3. every adversarial batch is verified (shape, finite, [0,1], budget) before its predictions count,
   and the attack's input batch must come back bit for bit as it was handed over (an attack that
   writes into ``x`` would be measured against the images it wrote);
4. the model is checked to be unchanged after the unit (weights and buffers bit for bit; hooks,
   global module hooks, train/eval mode, parametrizations: :class:`~.models.StateGuard`); a change
   makes the unit invalid and is undone, so later cells of the model are right.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..discovery import one_line
from ..errors import UserError
from ..plugins.applicability import NotApplicable
from ..plugins.base import Attack
from ..plugins.registry import get_attack
from ..plugins.verify import verify_batch
from ..results import (
    STATUS_FAILED,
    STATUS_INVALID,
    STATUS_NOT_APPLICABLE,
    STATUS_OK,
    STATUS_PRECEDENCE,
)
from ..utils import derive_seed
from .cascade import UpstreamBreaks
from .explorer import ExplorerCapture
from .inputs import SampleSource, to_engine_layout
from .models import same_bits
from .plan import AttackPlan, Unit
from .runtime import PreparedModel
from .shard import Records, attention_frame, clean_pass, drift_rows, predict, sample_frame, split_on_oom


class InvalidBatch(Exception):
    """A plugin broke the contract (output outside the budget, non-finite, model changed...)."""


@dataclass(frozen=True)
class UnitSettings:
    batch_size: int
    seed: int
    accounting: str
    explorer_samples: int = 0  # per cell, the first K positions whose images are kept (engine/explorer.py)


@dataclass
class UnitResult:
    samples: pd.DataFrame
    attention: pd.DataFrame | None
    eps_status: list[dict[str, Any]]  # per eps: eps, status, message, seconds, forward, backward
    clean_correct: np.ndarray | None = None  # per shard position: clean prediction == label
    explorer: dict[str, np.ndarray] | None = None  # this unit's explorer images (positions below K)

    @property
    def status(self) -> str:
        statuses = {s["status"] for s in self.eps_status}
        return next((s for s in STATUS_PRECEDENCE if s in statuses), STATUS_OK)


def unit_meta(unit: Unit, eps_status: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": unit.cell.key, "cell": unit.cell.id, "model": unit.cell.model,
            "attack": unit.cell.attack.label, "start": unit.start, "stop": unit.stop,
            "eps_status": eps_status}


def make_attack(plan: AttackPlan, seed: int) -> Attack:
    if plan.user_instance:
        attack = copy.copy(plan.prototype)
        attack.seed = seed
        return attack
    return get_attack(plan.name, seed=seed, **plan.params)


def _eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else repr(float(eps))


def _input_copy(x: torch.Tensor) -> torch.Tensor | np.ndarray:
    """A copy of an attack's input batch, to check afterwards that the attack left it alone.

    On CPU through NumPy: a single-threaded memcpy (~0.3 ms per 128 CIFAR images) where a torch op
    wakes the intra-op thread pool, which costs ~12 ms on 2 cores shared with another process."""
    if x.device.type == "cpu":
        return x.detach().numpy().copy()
    return x.detach().clone()


def _unchanged_input(x: torch.Tensor, before: torch.Tensor | np.ndarray) -> bool:
    """Bit for bit (a NaN the data already held is no change)."""
    if not isinstance(before, np.ndarray):
        return same_bits(x.detach(), before)
    now = x.detach().numpy()
    if now.shape != before.shape or now.dtype != before.dtype:
        return False
    ints = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[now.itemsize]
    return bool(np.array_equal(now.view(ints), before.view(ints)))


def run_attack_unit(pm: PreparedModel, source: SampleSource, unit: Unit, settings: UnitSettings,
                    on_batch: Callable[[int], None] | None = None,
                    upstream: UpstreamBreaks | None = None) -> UnitResult:
    """Attack one shard with one attack over its eps chain; see the module docstring.

    ``upstream`` (cascade accounting, engine/cascade.py): samples earlier attacks already broke,
    per budget; they are not attacked there and keep the earlier attack's example.
    """
    plan = unit.cell.attack
    chain = plan.chain
    E = len(chain)
    worst = settings.accounting in ("worst-case", "cascade")
    drift = pm.has_attention and plan.bounded
    explorer = ExplorerCapture.for_unit(unit.start, unit.stop, settings.explorer_samples, E)
    # explorer maps come from the forwards that predict anyway (one forward gives logits and maps)
    explorer_maps = pm.has_attention and explorer is not None
    t0 = time.perf_counter()
    f0, b0 = pm.model.work()
    shard = clean_pass(pm, source, np.arange(unit.start, unit.stop), settings.batch_size,
                       drift or explorer_maps, explorer)
    if explorer is not None:
        explorer.set_clean_maps(shard.maps)
    rec = Records(shard, E)
    skip = (upstream.has & shard.correct[None, :] if upstream is not None
            else np.zeros((E, len(shard.positions)), dtype=bool))
    seconds = [0.0] * E
    work = [[0, 0] for _ in range(E)]
    status = [(STATUS_OK, "")] * E
    att_rows: list[dict[str, np.ndarray]] = []
    attack = make_attack(plan, settings.seed)

    def seed_for(eps_tag: str, pos: np.ndarray) -> int:
        return derive_seed(settings.seed, unit.cell.model_sha256, plan.label, eps_tag, int(pos[0]))

    def check_mode() -> None:
        if any(mod.training for mod in pm.model.modules()):
            pm.model.eval()
            if any(mod.training for mod in pm.model.modules()):  # not the attack's doing
                raise InvalidBatch("the model stays in train mode after eval() (an overridden train()/"
                                   "eval()): its predictions change from call to call; fix the model")
            raise InvalidBatch("the attack left the model in train mode (batch-norm statistics and "
                               "dropout change the predictions)")

    def check_input(x: torch.Tensor, before: torch.Tensor | np.ndarray) -> None:
        # the budget is measured from x: an attack that wrote into it would pass any budget check
        if not _unchanged_input(x, before):
            ref = torch.from_numpy(before) if isinstance(before, np.ndarray) else before
            moved = len(ref)
            if x.shape == ref.shape:  # resized in place: nothing to count or put back
                moved = int((x != ref).flatten(1).any(1).sum()) or moved  # NaN != NaN counts as moved
                x.copy_(ref)
            raise InvalidBatch(f"the attack changed its input images in place ({moved} of {len(ref)} "
                               "samples): its output cannot be measured against the real images; an attack "
                               "must work on a copy of x")

    def evaluate(k: int, pos: np.ndarray, x: torch.Tensor, y: torch.Tensor, xa: Any) -> np.ndarray:
        """Verify one adversarial batch at budget k, predict, record; returns the broken mask."""
        eps = chain[k]
        if isinstance(xa, torch.Tensor):
            xa = xa.detach().contiguous(memory_format=torch.contiguous_format)
        v = verify_batch(x, xa, eps, plan.prototype.threat_model, plan.bounded)
        if not v.ok:
            where = "" if math.isinf(eps) else f"eps {eps * 255:.4g}/255: "
            raise InvalidBatch(where + str(v.reason))
        xa = to_engine_layout(xa)
        keep = explorer is not None and explorer.wants(pos)
        pred_t, *maps = predict(pm, xa, drift or (explorer_maps and keep))
        pred = pred_t.cpu().numpy()
        rel = pos - unit.start
        rec.record(k, rel, pred, v.norms.cpu().double().numpy(), shard.label)
        if drift:
            att_rows.append(drift_rows(shard, rel, maps, eps, source.index[pos]))
        if keep:
            explorer.add_adversarial(k, pos, x, xa, maps)
        return pred != shard.label[rel]  # host labels: no device sync per batch and budget

    def account(k: int, t_start: float, w_start: tuple[int, int]) -> None:
        f, b = pm.model.work()
        seconds[k] += time.perf_counter() - t_start
        work[k][0] += f - w_start[0]
        work[k][1] += b - w_start[1]

    # the clean pass is part of the first budget's work
    account(0, t0, (f0, b0))
    # amp speeds up gradient attacks only; query-based and minimal-norm ones run in float32
    precision = contextlib.nullcontext if plan.runs_under_amp else pm.model.float32
    try:
        if plan.multi_eps and plan.bounded:
            t1, w1 = time.perf_counter(), pm.model.work()
            todo = shard.positions[shard.correct & ~skip[0]]  # skipped at the smallest: skipped at all

            def attack_many(a: torch.Tensor, b: torch.Tensor, p: np.ndarray) -> list[torch.Tensor]:
                attack.seed = seed_for("multi", p)  # per OOM half: its own first position
                with precision():
                    return list(attack.perturb_many(pm.model, a, b, list(chain)))

            for pos, x, y in source.batches(todo, settings.batch_size, pm.device):
                before = _input_copy(x)
                advs = split_on_oom(attack_many, x, y, pos)
                check_mode()
                check_input(x, before)
                if not isinstance(advs, list) or len(advs) != E:
                    raise InvalidBatch(f"returned {len(advs) if isinstance(advs, list) else 'no list of'} "
                                       f"batches for {E} eps")
                alive = np.ones(len(pos), dtype=bool)
                rel_b = pos - unit.start
                for k in range(E):
                    sel = (alive if worst else np.ones(len(pos), dtype=bool)) & ~skip[k, rel_b]
                    if not sel.any():
                        break
                    idx = torch.as_tensor(np.flatnonzero(sel), device=x.device)
                    xa = advs[k][idx] if isinstance(advs[k], torch.Tensor) else advs[k]
                    hit = evaluate(k, pos[sel], x[idx], y[idx], xa)
                    alive[np.flatnonzero(sel)[hit]] = False
                if on_batch:
                    on_batch(len(pos))
            account(0, t1, w1)
        else:
            def attack_one(a: torch.Tensor, b: torch.Tensor, p: np.ndarray, eps: float) -> list[torch.Tensor]:
                attack.seed = seed_for(_eps_tag(eps), p)  # per OOM half: its own first position
                with precision():
                    return [attack.perturb(pm.model, a, b, eps)]

            failed_at: tuple[str, str] | None = None
            for k, eps in enumerate(chain):
                if failed_at is not None:
                    status[k] = (failed_at[0], f"not run: the budget before failed ({failed_at[1]})")
                    continue
                t1, w1 = time.perf_counter(), pm.model.work()
                todo_mask = shard.correct & (rec.first_broken >= k if worst else True) & ~skip[k]
                todo = shard.positions[todo_mask]
                try:
                    for pos, x, y in source.batches(todo, settings.batch_size, pm.device):
                        if plan.bounded and eps == 0:
                            advs = [x.clone()]  # the only perturbation within a zero budget is none
                        else:
                            before = _input_copy(x)
                            advs = split_on_oom(partial(attack_one, eps=eps), x, y, pos)
                            check_mode()
                            check_input(x, before)
                        evaluate(k, pos, x, y, advs[0])
                        if on_batch:
                            on_batch(len(pos))
                except InvalidBatch as exc:
                    status[k] = (STATUS_INVALID, str(exc))
                    failed_at = status[k]
                except (UserError, NotApplicable):
                    raise
                except Exception as exc:  # a broken plugin fails its cell, never the sweep
                    status[k] = (STATUS_FAILED, one_line(exc)[:400])
                    failed_at = status[k]
                finally:
                    account(k, t1, w1)
    except InvalidBatch as exc:
        status = [(STATUS_INVALID, str(exc))] * E
    except UserError:
        raise
    except NotApplicable as exc:  # the whole cell, eps 0 included: the attack does not apply here
        # the status says what happened; the message only why (no exception class name)
        why = " ".join(str(exc).split())[:400] or "the attack does not apply to this model"
        status = [(STATUS_NOT_APPLICABLE, why)] * E
    except Exception as exc:
        status = [(STATUS_FAILED, one_line(exc)[:400])] * E
    finally:
        pm.model.eval()
    # structure first (a parametrization moves the weights), then the weights' values
    state = pm.state.changed() if pm.state is not None else []
    if state:
        pm.state.restore()
    changed = pm.guard.changed()
    if changed:
        pm.guard.restore()
    if state or changed:
        parts = state[:2] + ([f"{len(changed)} weight/buffer tensors, e.g. '{changed[0]}'"]
                             if changed else [])
        more = len(state) - 2 if len(state) > 2 else 0
        status = [(STATUS_INVALID, f"the attack changed the model ({'; '.join(parts)}"
                   f"{f'; +{more} more' if more else ''}): results discarded, model restored for the "
                   "next cell")] * E
    if worst:
        rec.carry()
        if explorer is not None:
            explorer.carry(rec.first_broken, rec.attacked)
    if upstream is not None:
        rec.fill_upstream(upstream, skip)
    return UnitResult(
        samples=sample_frame(unit, source, shard, rec, chain),
        attention=attention_frame(unit, att_rows) if att_rows and all(s == STATUS_OK for s, _ in status)
        else None,
        eps_status=[{"eps": float(e), "status": s, "message": msg, "seconds": seconds[k],
                     "forward": work[k][0], "backward": work[k][1]}
                    for k, (e, (s, msg)) in enumerate(zip(chain, status, strict=True))],
        clean_correct=shard.correct,
        explorer=explorer.arrays(model=unit.cell.model, attack=plan.label, key=unit.cell.key, eps=chain,
                                 index=source.index[shard.positions], label=shard.label)
        if explorer is not None else None)


