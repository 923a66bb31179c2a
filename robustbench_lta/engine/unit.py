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
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..analysis.attention import box_mass, js_divergence
from ..errors import UserError
from ..plugins.applicability import NotApplicable
from ..plugins.base import Attack
from ..plugins.registry import get_attack
from ..plugins.verify import verify_batch
from ..results import (
    ATTENTION_COLUMNS,
    SAMPLE_COLUMNS,
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


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:400]


def make_attack(plan: AttackPlan, seed: int) -> Attack:
    if plan.user_instance:
        attack = copy.copy(plan.prototype)
        attack.seed = seed
        return attack
    return get_attack(plan.name, seed=seed, **plan.params)


def _eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else repr(float(eps))


def _free_accelerator_memory() -> None:
    gc.collect()  # frames of the failed call caught in reference cycles hold its tensors too
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _split_on_oom(fn: Callable[..., list[torch.Tensor]], *parts: Any) -> list[torch.Tensor]:
    """``fn(*parts)``; on CUDA out-of-memory, ``fn`` on both halves of every part (recursively), joined.

    ``parts`` are batch-aligned (tensors, position arrays): each half gets its own positions, so an
    attack seeded from its first sample position draws a half's own random start. The halves run
    outside the ``except`` block: while it is active, the exception's traceback keeps the failed
    call's frames alive, and with them its activations and autograd graph, so halving would free
    little and end at batch size 1. A batch of one that runs out of memory raises.
    """
    n = len(parts[0])
    try:
        return fn(*parts)
    except torch.cuda.OutOfMemoryError:
        if n <= 1:
            raise
    # past the handler: the exception, its traceback and the failed call's tensors are released
    _free_accelerator_memory()
    h = n // 2
    first = _split_on_oom(fn, *[p[:h] for p in parts])
    second = _split_on_oom(fn, *[p[h:] for p in parts])
    return [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]


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


def _predict(pm: PreparedModel, x: torch.Tensor, with_maps: bool) -> list[torch.Tensor]:
    """``[predicted class, *attention maps]`` of a batch, in float32 whatever the sweep's ``amp`` (the
    counted predictions never depend on the attack's precision), halving the batch on out-of-memory."""
    def run(xb: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode(), pm.model.float32():
            if with_maps:
                logits, maps = pm.model.logits_and_maps(xb)
                return [logits.argmax(1), *maps]
            return [pm.model(xb).argmax(1)]
    return _split_on_oom(run, x)


@dataclass
class _Shard:
    """The clean state of one shard, plus the per-eps records being filled in."""

    positions: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    maps: list[torch.Tensor] | None
    boxes: torch.Tensor | None
    size: tuple[int, int] = (0, 0)  # image (H, W): attention boxes are in pixels

    @property
    def correct(self) -> np.ndarray:
        return self.clean_pred == self.label


def clean_pass(pm: PreparedModel, source: SampleSource, positions: np.ndarray, batch_size: int,
               with_maps: bool, explorer: ExplorerCapture | None = None) -> _Shard:
    m = len(positions)
    label = np.empty(m, dtype=np.int64)
    clean_pred = np.empty(m, dtype=np.int64)
    parts: list[list[torch.Tensor]] = []
    done = 0
    size = (0, 0)
    with torch.inference_mode():
        for pos, x, y in source.batches(positions, batch_size, pm.device):
            size = (int(x.shape[-2]), int(x.shape[-1]))
            pred, *maps = _predict(pm, x, with_maps)
            if with_maps:
                parts.append(maps)
            if explorer is not None:
                explorer.add_clean(pos, x)
            k = len(x)
            label[done:done + k] = y.cpu().numpy()
            clean_pred[done:done + k] = pred.cpu().numpy()
            done += k
    if m and int(label.max()) >= pm.num_classes:
        raise UserError(f"model '{pm.label}' has {pm.num_classes} outputs but the data has labels up to "
                        f"{int(label.max())}: attack it on the dataset it was trained for")
    maps = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))] if parts else None
    boxes = torch.as_tensor(source.boxes[positions]) if source.boxes is not None else None
    return _Shard(positions, label, clean_pred, maps, boxes, size)


class _Records:
    """Per-eps predictions, norms and flags of one shard, with worst-case carrying."""

    def __init__(self, shard: _Shard, n_eps: int) -> None:
        m = len(shard.positions)
        self.adv_pred = np.tile(shard.clean_pred, (n_eps, 1))
        self.norms = np.zeros((n_eps, m), dtype=np.float64)
        self.attacked = np.zeros((n_eps, m), dtype=bool)
        self.first_broken = np.full(m, n_eps, dtype=np.int64)  # index of the first eps that broke it
        self.skipped_by = np.full((n_eps, m), "", dtype=object)  # cascade: the earlier attack's label

    def record(self, k: int, rel: np.ndarray, pred: np.ndarray, norms: np.ndarray, label: np.ndarray) -> None:
        self.adv_pred[k, rel] = pred
        self.norms[k, rel] = norms
        self.attacked[k, rel] = True
        hit = rel[pred != label[rel]]
        self.first_broken[hit] = np.minimum(self.first_broken[hit], k)

    def carry(self) -> None:
        """A sample broken at budget j is broken with the same example at every later budget."""
        for k in range(1, self.adv_pred.shape[0]):
            was = (self.first_broken < k) & ~self.attacked[k]
            j = self.first_broken[was]
            self.adv_pred[k, was] = self.adv_pred[j, np.flatnonzero(was)]
            self.norms[k, was] = self.norms[j, np.flatnonzero(was)]

    def fill_upstream(self, up: UpstreamBreaks, skip: np.ndarray) -> None:
        """Cascade: where an earlier attack broke a sample this one did not attack, its example counts."""
        for k in range(self.adv_pred.shape[0]):
            fill = skip[k] & ~self.attacked[k] & (self.first_broken >= k)
            self.adv_pred[k, fill] = up.pred[k, fill]
            self.norms[k, fill] = up.norm[k, fill]
            self.skipped_by[k, fill] = up.by[k, fill]


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
    rec = _Records(shard, E)
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
        pred_t, *maps = _predict(pm, xa, drift or (explorer_maps and keep))
        pred = pred_t.cpu().numpy()
        rel = pos - unit.start
        rec.record(k, rel, pred, v.norms.cpu().double().numpy(), shard.label)
        if drift:
            att_rows.append(_drift_rows(shard, rel, maps, eps, source.index[pos]))
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
                advs = _split_on_oom(attack_many, x, y, pos)
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
                            advs = _split_on_oom(partial(attack_one, eps=eps), x, y, pos)
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
                    status[k] = (STATUS_FAILED, one_line(exc))
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
        status = [(STATUS_FAILED, one_line(exc))] * E
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
        samples=_sample_frame(unit, source, shard, rec, chain),
        attention=_attention_frame(unit, att_rows) if att_rows and all(s == STATUS_OK for s, _ in status)
        else None,
        eps_status=[{"eps": float(e), "status": s, "message": msg, "seconds": seconds[k],
                     "forward": work[k][0], "backward": work[k][1]}
                    for k, (e, (s, msg)) in enumerate(zip(chain, status, strict=True))],
        clean_correct=shard.correct,
        explorer=explorer.arrays(model=unit.cell.model, attack=plan.label, key=unit.cell.key, eps=chain,
                                 index=source.index[shard.positions], label=shard.label)
        if explorer is not None else None)


def _drift_rows(shard: _Shard, rel: np.ndarray, adv_maps: list[torch.Tensor], eps: float,
                index: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample drift of every level's map (clean vs adversarial), as column arrays."""
    cols: dict[str, list[np.ndarray]] = {"level": [], "js_divergence": [], "box_mass_clean": [],
                                         "box_mass_adv": [], "index": []}
    assert shard.maps is not None
    sel = torch.as_tensor(rel, device=shard.maps[0].device)
    for level, adv in enumerate(adv_maps):
        clean = shard.maps[level][sel]
        cols["js_divergence"].append(js_divergence(clean, adv).float().cpu().numpy())
        if shard.boxes is not None:
            boxes = shard.boxes[torch.as_tensor(rel)].to(adv.device)
            cols["box_mass_clean"].append(box_mass(clean, boxes, shard.size).float().cpu().numpy())
            cols["box_mass_adv"].append(box_mass(adv, boxes, shard.size).float().cpu().numpy())
        else:
            cols["box_mass_clean"].append(np.full(len(rel), np.nan, dtype=np.float32))
            cols["box_mass_adv"].append(np.full(len(rel), np.nan, dtype=np.float32))
        cols["level"].append(np.full(len(rel), level, dtype=np.int64))
        cols["index"].append(np.asarray(index))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["eps"] = np.full(len(out["level"]), float(eps))
    return out


def _sample_frame(unit: Unit, source: SampleSource, shard: _Shard, rec: _Records,
                  chain: tuple[float, ...]) -> pd.DataFrame:
    frames = []
    index = source.index[shard.positions].astype(np.int64)
    for k, eps in enumerate(chain):
        frames.append(pd.DataFrame({
            "model": unit.cell.model, "attack": unit.cell.attack.label, "eps": float(eps), "index": index,
            "label": shard.label, "clean_pred": shard.clean_pred, "adv_pred": rec.adv_pred[k],
            "norm": rec.norms[k], "attacked": rec.attacked[k], "broken": rec.adv_pred[k] != shard.label,
            "skipped_by": rec.skipped_by[k]}))
    return pd.concat(frames, ignore_index=True)[SAMPLE_COLUMNS]


def _attention_frame(unit: Unit, rows: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    df = pd.DataFrame({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
    df.insert(0, "attack", unit.cell.attack.label)
    df.insert(0, "model", unit.cell.model)
    return df[ATTENTION_COLUMNS]
