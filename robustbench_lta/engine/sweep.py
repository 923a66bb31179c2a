"""The sweep: models x attacks x eps into per-sample records, summary tables and sanity checks.

The path of one sweep (docs/architecture.md):

1. ``SweepConfig`` (validated once) or the Python API's arguments.
2. Plan the cells (model x attack x eps-group); cells already in the results folder are reused.
3. Per model: load, eval mode, parameters frozen, model checks, one clean forward over the samples;
   clean predictions (and attention maps) are shared by every attack and eps.
4. Per cell: batches of the samples that still matter (clean-correct; in worst-case accounting,
   not yet broken at a smaller eps by this attack) -> the plugin -> one adversarial batch per eps.
5. Every batch is verified (shape, finite, [0,1], budget) before its predictions count.
6. The finished cell is written atomically.
7. After the last cell: worst case per sample, sanity checks, tables and the manifest.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..analysis.attention import box_mass, js_divergence
from ..config import DataSpec, SweepConfig, SweepModelSpec, parse_attack_string, validate
from ..data.registry import ImageDataset, load_dataset
from ..errors import UserError
from ..plugins.base import Attack
from ..plugins.registry import discover, get_attack
from ..plugins.verify import verify_batch
from ..sources import check_data_against_card, resolve_model_source
from ..sources.published import published_comparison
from ..utils import derive_seed, device_description, git_commit, package_versions, resolve_device
from .accounting import SAMPLE_COLUMNS, SUMMARY_COLUMNS, WORST_CASE, summary_row, worst_case_rows
from .plan import AttackPlan, Cell, plan_model_cells
from .sanity import SANITY_COLUMNS, AttackTraits, large_eps_row, model_checks, table_checks
from .store import ResultStore

ATTENTION_COLUMNS = ["model", "attack", "eps", "index", "level", "js_divergence", "box_mass_clean",
                     "box_mass_adv"]
LARGE_EPS = 128 / 255
_CHECK_SAMPLES = 16  # determinism / logits / gradient-health checks need few samples


# ================================================================================ inputs
@dataclass
class LoadedModel:
    label: str
    module: nn.Module
    source: str
    fingerprint: dict[str, Any]
    card: dict[str, Any] | None = None

    @property
    def has_attention(self) -> bool:
        return bool(getattr(self.module, "has_attention", False))


@dataclass
class SweepData:
    x: torch.Tensor          # (N,C,H,W) float in [0,1], CPU
    y: torch.Tensor          # (N,) int64
    index: np.ndarray        # dataset indices of the samples
    name: str
    classes: list[str]
    boxes: torch.Tensor | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)


def _tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _module_fingerprint(module: nn.Module) -> dict[str, Any]:
    state = module.state_dict()
    return {"module": type(module).__name__, "state_sha256": _tensor_hash(*state.values())}


def load_sweep_model(spec: SweepModelSpec | nn.Module, label: str | None, seed: int) -> LoadedModel:
    """Any nn.Module, or a model source resolved by robustbench_lta.sources (checkpoint, registry name,
    robustbench:, timm:, torchvision:, hf-hub:, bare weights with arch)."""
    if isinstance(spec, nn.Module):
        return LoadedModel(label or type(spec).__name__, spec, f"module:{type(spec).__name__}",
                           _module_fingerprint(spec), getattr(spec, "card", None))
    resolved = resolve_model_source(spec.source, arch=spec.arch, name=label or spec.name,
                                    num_classes=spec.num_classes, width=spec.width, seed=seed,
                                    download=spec.download, resize_inputs=spec.resize_inputs)
    card = resolved.card
    default = (spec.source.split(":", 1)[1].rstrip("/").split("/")[-1].split("@")[0]
               if spec.source.startswith(("robustbench:", "timm:", "torchvision:", "hf-hub:"))
               else Path(spec.source).stem)
    if card.details.get("model", {}).get("name"):  # project checkpoints are labelled by architecture
        default = str(card.details["model"]["name"])
    return LoadedModel(label or spec.name or default, resolved.module, card.source, resolved.fingerprint,
                       card.as_dict())


def _card_data_spec(card: Mapping[str, Any] | None) -> DataSpec | None:
    """The dataset a checkpoint was trained on, as a DataSpec (its test split is attacked)."""
    if not card:
        return None
    training = card.get("training") or card.get("training_config") or {}
    data = training.get("data") if isinstance(training, Mapping) else None
    if isinstance(data, Mapping) and data.get("name"):
        return DataSpec(name=data["name"], root=data.get("root"), kwargs=dict(data.get("kwargs") or {}))
    ds = card.get("dataset")
    if isinstance(ds, Mapping) and ds.get("name"):
        return DataSpec(name=ds["name"], root=ds.get("root"), kwargs=dict(ds.get("kwargs") or {}))
    if isinstance(ds, str):
        return DataSpec(name=ds)
    return None


def _from_image_dataset(ds: ImageDataset, n: int | None) -> SweepData:
    count = len(ds) if n is None else min(n, len(ds))
    idx = np.arange(count)
    x, y = ds.tensors(torch.as_tensor(idx))
    boxes = ds.boxes[:count].float() if getattr(ds, "boxes", None) is not None else None
    return SweepData(x=x, y=y, index=idx, name=str(ds.name), classes=list(ds.classes), boxes=boxes)


def resolve_data(data: Any, n: int | None) -> SweepData:
    """An ImageDataset, any Dataset of (image, label), a DataLoader, or an (x, y) pair of tensors."""
    if isinstance(data, SweepData):
        out = data
    elif isinstance(data, ImageDataset):
        out = _from_image_dataset(data, n)
    elif isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        count = len(x) if n is None else min(n, len(x))
        out = SweepData(x=x[:count].float().cpu(), y=torch.as_tensor(y[:count]).long().cpu(),
                        index=np.arange(count), name="tensors",
                        classes=[str(c) for c in range(int(torch.as_tensor(y).max()) + 1)])
    elif isinstance(data, torch.utils.data.DataLoader | torch.utils.data.Dataset):
        loader = data if isinstance(data, torch.utils.data.DataLoader) else \
            torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
        xs, ys, total = [], [], 0
        for xb, yb in loader:
            xs.append(torch.as_tensor(xb).float())
            ys.append(torch.as_tensor(yb).long())
            total += len(xb)
            if n is not None and total >= n:
                break
        if not xs:
            raise UserError("the dataset given to run_sweep is empty")
        x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
        classes = getattr(data, "classes", None) or getattr(getattr(data, "dataset", None), "classes", None)
        out = SweepData(x=x, y=y, index=np.arange(len(x)), name=type(data).__name__,
                        classes=list(classes) if classes else [str(c) for c in range(int(y.max()) + 1)])
    else:
        raise UserError(f"data must be a Dataset, a DataLoader or an (x, y) pair of tensors, "
                        f"not {type(data).__name__}")
    if out.x.ndim != 4 or len(out.x) != len(out.y):
        raise UserError(f"images must be (N,C,H,W) with one label each; got {tuple(out.x.shape)} images "
                        f"and {tuple(out.y.shape)} labels")
    lo, hi = float(out.x.min()), float(out.x.max())
    if lo < 0 or hi > 1:
        raise UserError(f"input images must be in [0,1] (found values in [{lo:.3g}, {hi:.3g}]): "
                        "pass unnormalised images and put the normalisation inside the model")
    if not out.fingerprint:
        out.fingerprint = {"name": out.name, "n": len(out.y), "sha256": _tensor_hash(out.x, out.y)}
    return out


# ================================================================================ execution
class _Forward:
    """The model's forward as the engine calls it: autocast on CUDA when asked, float32 logits."""

    def __init__(self, model: nn.Module, device: torch.device, amp: str) -> None:
        self.model = model
        self.device = device
        self.dtype: torch.dtype | None = None
        if device.type == "cuda" and amp != "off":
            bf16 = torch.cuda.is_bf16_supported()
            self.dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not bf16) else torch.bfloat16

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            return self.model(x).float()

    def with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with self._ctx():
            logits, maps = self.model(x, return_attention=True)
        return logits.float(), [m.float() for m in maps]


class _AutocastModule(nn.Module):
    """Wraps a model so attacks run their forwards under autocast too (logits back in float32)."""

    def __init__(self, fwd: _Forward) -> None:
        super().__init__()
        self.inner = fwd.model
        self._fwd = fwd

    def forward(self, x: torch.Tensor, **kw: Any) -> Any:
        if kw:
            return self.inner(x, **kw)
        return self._fwd(x)


class _InvalidBatch(Exception):
    pass


def _batches(indices: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:400]


@dataclass
class _ModelState:
    """What every cell of one model shares: data on the device and the clean predictions."""

    lm: LoadedModel
    model: nn.Module          # what attacks receive
    fwd: _Forward
    x: torch.Tensor
    y: torch.Tensor
    clean_pred: np.ndarray
    correct: np.ndarray
    clean_maps: list[torch.Tensor] | None
    boxes: torch.Tensor | None
    num_classes: int


class SweepRunner:
    """Runs one sweep into one results folder; resumable at cell granularity."""

    def __init__(self, cfg: SweepConfig, models: Sequence[LoadedModel], data: SweepData,
                 attacks: Sequence[AttackPlan], out_dir: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.models = list(models)
        self.data = data
        self.attacks = list(attacks)
        self.store = ResultStore(out_dir)
        self.device = resolve_device(cfg.device)
        self.progress = progress
        self.batch_size = cfg.batch_size
        self.sanity_rows: list[dict[str, Any]] = []
        self.cells_run = 0
        self.cells_reused = 0

    # -- per model --------------------------------------------------------------------------------
    def _prepare(self, lm: LoadedModel) -> _ModelState:
        model = lm.module.to(self.device).eval()
        for p in model.parameters():  # attacks need input gradients only: skip weight gradients
            p.requires_grad_(False)
        if self.cfg.channels_last:  # NHWC convolutions are faster on CPU (oneDNN) and CUDA alike
            model = model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and self.cfg.compile:
            model = torch.compile(model)
        fwd = _Forward(model, self.device, self.cfg.amp)
        x = self.data.x.to(self.device)
        y = self.data.y.to(self.device)
        logits_parts, maps = [], []
        with torch.inference_mode():
            for b in _batches(np.arange(len(x)), self.batch_size):
                if lm.has_attention:
                    logits, m = fwd.with_maps(x[b])
                    maps.append(m)
                else:
                    logits = fwd(x[b])
                logits_parts.append(logits)
        clean_logits = torch.cat(logits_parts)
        num_classes = int(clean_logits.shape[1])
        if int(self.data.y.max()) >= num_classes:
            raise UserError(f"model '{lm.label}' has {num_classes} outputs but the data has labels up to "
                            f"{int(self.data.y.max())}: attack it on the dataset it was trained for")
        k = min(len(x), _CHECK_SAMPLES)
        self.sanity_rows += model_checks(lm.label, fwd, x[:k], y[:k], clean_logits[:k])
        clean_pred = clean_logits.argmax(1).cpu().numpy()
        clean_maps = [torch.cat([m[j] for m in maps]) for j in range(len(maps[0]))] if maps else None
        attack_model = _AutocastModule(fwd) if fwd.dtype is not None else model
        return _ModelState(lm, attack_model, fwd, x, y, clean_pred, clean_pred == self.data.y.numpy(),
                           clean_maps, self.data.boxes, num_classes)

    def _large_eps_probe(self, st: _ModelState) -> None:
        n = min(self.cfg.sanity_samples, int(st.correct.sum()))
        if n == 0:
            return
        idx = np.flatnonzero(st.correct)[:n]
        attack = get_attack("pgd-linf", seed=derive_seed(self.cfg.seed, st.lm.label, "probe"), steps=10)
        x, y = st.x[idx], st.y[idx]
        adv = attack.perturb(st.model, x, y, LARGE_EPS)
        with torch.inference_mode():
            acc = float((st.fwd(adv).argmax(1) == y).float().mean())
        self.sanity_rows.append(large_eps_row(st.lm.label, acc, LARGE_EPS, st.num_classes))

    # -- per cell ---------------------------------------------------------------------------------
    def _make_attack(self, plan: AttackPlan, seed: int) -> Attack:
        if plan.user_instance:
            attack = copy.copy(plan.prototype)
            attack.seed = seed
            return attack
        return get_attack(plan.name, seed=seed, **plan.params)

    def _attack_batch(self, attack: Attack, plan: AttackPlan, model: nn.Module, x: torch.Tensor,
                      y: torch.Tensor, eps: tuple[float, ...]) -> list[torch.Tensor]:
        if plan.multi_eps and plan.bounded:
            advs = attack.perturb_many(model, x, y, list(eps))
        elif plan.bounded and eps[0] == 0:
            advs = [x.clone()]  # the only perturbation within a zero budget is none: skip the work
        else:
            advs = [attack.perturb(model, x, y, eps[0])]
        if not isinstance(advs, list | tuple) or len(advs) != len(eps):
            raise _InvalidBatch(f"returned {len(advs) if isinstance(advs, list | tuple) else 'no list of'} "
                                f"batches for {len(eps)} eps")
        if model.training or st_training(model):
            model.eval()
            raise _InvalidBatch("the attack left the model in train mode (batch-norm statistics and "
                                "dropout change the predictions)")
        return list(advs)

    def _run_cell(self, st: _ModelState, cell: Cell, prev: dict[str, np.ndarray] | None
                  ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
        plan = cell.attack
        n = len(st.y)
        label = self.data.y.numpy()
        seed = derive_seed(self.cfg.seed, st.lm.label, plan.label, *cell.eps)
        inherit = (self.cfg.accounting == "worst-case" and prev is not None
                   and not plan.multi_eps and plan.bounded)
        todo = st.correct & ~prev["broken"] if inherit else st.correct.copy()
        indices = np.flatnonzero(todo)
        E = len(cell.eps)
        adv_pred = np.tile(st.clean_pred, (E, 1))
        norms = np.zeros((E, n), dtype=np.float64)
        attacked = np.zeros((E, n), dtype=bool)
        if inherit:
            carried = prev["broken"] & st.correct
            adv_pred[:, carried] = prev["adv_pred"][carried]
            norms[:, carried] = prev["norm"][carried]
        att_rows: list[dict[str, np.ndarray]] = []
        status, message = "ok", ""
        torch.manual_seed(seed)  # for libraries that draw from the global generator
        t0 = time.perf_counter()
        bar = tqdm(total=len(indices), desc=f"  {st.lm.label} | {plan.label}", unit="img", leave=False,
                   disable=not self.progress)
        try:
            attack = self._make_attack(plan, seed)
            pending = list(_batches(indices, self.batch_size))
            while pending:
                b = pending.pop(0)
                xb, yb = st.x[b], st.y[b]
                try:
                    advs = self._attack_batch(attack, plan, st.model, xb, yb, cell.eps)
                except torch.cuda.OutOfMemoryError:
                    if len(b) == 1:
                        raise
                    torch.cuda.empty_cache()  # back off: split the batch and retry both halves
                    self.batch_size = max(1, len(b) // 2)
                    pending[:0] = [b[: len(b) // 2], b[len(b) // 2:]]
                    continue
                for k, (eps, xa) in enumerate(zip(cell.eps, advs, strict=True)):
                    v = verify_batch(xb, xa, eps, plan.prototype.threat_model, plan.bounded)
                    if not v.ok:
                        where = "" if math.isinf(eps) else f"eps {eps * 255:.4g}/255: "
                        raise _InvalidBatch(where + str(v.reason))
                    xa = xa.detach().to(st.x.dtype)
                    with torch.inference_mode():
                        if st.clean_maps is not None and plan.bounded:
                            logits, maps = st.fwd.with_maps(xa)
                            att_rows.append(self._attention_rows(st, plan.label, eps, b, maps))
                        else:
                            logits = st.fwd(xa)
                    adv_pred[k, b] = logits.argmax(1).cpu().numpy()
                    norms[k, b] = v.norms.cpu().double().numpy()
                    attacked[k, b] = True
                bar.update(len(b))
        except _InvalidBatch as exc:
            status, message = "invalid", str(exc)
        except UserError:
            raise
        except Exception as exc:  # a broken plugin fails its cell, never the sweep
            status, message = "failed", _one_line(exc)
        finally:
            bar.close()
            st.model.eval()
        seconds = time.perf_counter() - t0
        rows = []
        frames = []
        for k, eps in enumerate(cell.eps):
            ok = status == "ok"
            rows.append(summary_row(
                model=st.lm.label, dataset=self.data.name, attack=plan.label, norm=plan.norm, eps=eps,
                label=label, clean_pred=st.clean_pred, adv_pred=adv_pred[k] if ok else None,
                norms=norms[k] if ok else None, seconds=seconds / E, status=status, message=message))
            if ok:
                frames.append(pd.DataFrame({
                    "model": st.lm.label, "attack": plan.label, "eps": float(eps), "index": self.data.index,
                    "label": label, "clean_pred": st.clean_pred, "adv_pred": adv_pred[k],
                    "norm": norms[k], "attacked": attacked[k], "broken": adv_pred[k] != label}))
        samples = pd.concat(frames, ignore_index=True) if frames else _empty(SAMPLE_COLUMNS)
        attention = None
        if att_rows and status == "ok":
            attention = pd.DataFrame({k: np.concatenate([r[k] for r in att_rows]) for k in att_rows[0]})
            attention.insert(0, "attack", plan.label)
            attention.insert(0, "model", st.lm.label)
            attention = attention[ATTENTION_COLUMNS]
        meta = {"key": cell.key, "id": cell.id, "model": st.lm.label, "attack": plan.label,
                "eps": [float(e) for e in cell.eps], "seed": seed, "rows": rows}
        return meta, samples, attention

    def _attention_rows(self, st: _ModelState, attack: str, eps: float, b: np.ndarray,
                        adv_maps: list[torch.Tensor]) -> dict[str, np.ndarray]:
        """Per-sample drift of every level's map (clean vs adversarial), as column arrays."""
        size = tuple(st.x.shape[-2:])
        rows_idx = torch.as_tensor(b, device=st.x.device)
        boxes = st.boxes[torch.as_tensor(b)].to(st.x.device) if st.boxes is not None else None
        cols: dict[str, list[np.ndarray]] = {"level": [], "js_divergence": [], "box_mass_clean": [],
                                             "box_mass_adv": [], "index": []}
        for level, adv in enumerate(adv_maps):
            clean = st.clean_maps[level][rows_idx]
            cols["js_divergence"].append(js_divergence(clean, adv).cpu().numpy())
            if boxes is not None:
                cols["box_mass_clean"].append(box_mass(clean, boxes, size).cpu().numpy())
                cols["box_mass_adv"].append(box_mass(adv, boxes, size).cpu().numpy())
            else:
                cols["box_mass_clean"].append(np.full(len(b), np.nan, dtype=np.float32))
                cols["box_mass_adv"].append(np.full(len(b), np.nan, dtype=np.float32))
            cols["level"].append(np.full(len(b), level, dtype=np.int64))
            cols["index"].append(self.data.index[b])
        out = {k: np.concatenate(v) for k, v in cols.items()}
        out["eps"] = np.full(len(out["level"]), float(eps))
        return out

    def _figure_attack(self) -> AttackPlan | None:
        bounded = [a for a in self.attacks if a.bounded and a.norm == "linf"]
        for a in bounded:
            if a.name == "fgsm":
                return a
        return bounded[0] if bounded else None

    def _attention_figure_data(self, st: _ModelState, lm: LoadedModel) -> None:
        plan, key = self._figure_attack(), self._figure_key(lm)
        if plan is None or key is None or st.clean_maps is None:
            return
        if self.store.read_attention_key(lm.label) == key:
            return
        k = min(self.cfg.attention_samples, len(st.y))
        idx = np.arange(k)
        x, y = st.x[idx], st.y[idx]
        attack = self._make_attack(plan, derive_seed(self.cfg.seed, st.lm.label, plan.label, "figure"))
        advs = self._attack_batch(attack, plan, st.model, x, y, plan.eps) if plan.multi_eps \
            else [self._attack_batch(attack, plan, st.model, x, y, (e,))[0] for e in plan.eps]
        arrays: dict[str, np.ndarray] = {
            "key": np.array(key), "attack": np.array(plan.label), "index": self.data.index[idx],
            "labels": self.data.y[idx].numpy(), "images": x.float().cpu().numpy(),
            "eps": np.array(plan.eps, dtype=np.float64), "clean_pred": st.clean_pred[idx],
            "adv_images": torch.stack([a.detach().float().cpu() for a in advs]).numpy(),
        }
        adv_preds, adv_maps = [], []
        with torch.inference_mode():
            for a in advs:
                logits, maps = st.fwd.with_maps(a.detach().to(st.x.dtype))
                adv_preds.append(logits.argmax(1).cpu().numpy())
                adv_maps.append([m.cpu().numpy() for m in maps])
        arrays["adv_pred"] = np.stack(adv_preds)
        for j in range(len(st.clean_maps)):
            arrays[f"clean_level{j}"] = st.clean_maps[j][:k].cpu().numpy()
            arrays[f"adv_level{j}"] = np.stack([m[j] for m in adv_maps])
        if st.boxes is not None:
            arrays["boxes"] = st.boxes[:k].cpu().numpy()
        self.store.write_attention_arrays(st.lm.label, arrays)

    # -- the whole sweep --------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        plans = {lm.label: plan_model_cells(lm.label, lm.fingerprint, self.data.fingerprint, self.attacks,
                                            self.cfg.seed, self.cfg.accounting) for lm in self.models}
        total = sum(len(c) for c in plans.values())
        self.store.write_manifest(self._manifest(started, None))
        metas: list[dict[str, Any]] = []
        sample_frames: list[pd.DataFrame] = []
        att_frames: list[pd.DataFrame] = []
        outer = tqdm(total=total, desc="sweep", unit="cell", disable=not self.progress)
        try:
            for lm in self.models:
                st: _ModelState | None = None
                prev: dict[str, dict[str, np.ndarray]] = {}
                for cell in plans[lm.label]:
                    outer.set_postfix_str(f"{lm.label} | {cell.attack.label} | " + ",".join(
                        "inf" if math.isinf(e) else f"{e * 255:.3g}" for e in cell.eps))
                    stored = self.store.load_cell(cell.id, cell.key)
                    if stored is None:
                        if st is None:
                            st = self._prepare(lm)
                        meta, samples, attention = self._run_cell(st, cell, prev.get(cell.attack.label))
                        self.store.write_cell(cell.id, meta, samples, attention)
                        self.cells_run += 1
                    else:
                        meta, samples = stored
                        attention = self.store.load_cell_attention(cell.id)
                        self.cells_reused += 1
                    metas.append(meta)
                    sample_frames.append(samples)
                    if attention is not None:
                        att_frames.append(attention)
                    if meta["rows"][-1]["status"] == "ok" and len(samples):
                        last = samples[samples["eps"] == samples["eps"].max()]
                        prev[cell.attack.label] = {"broken": last["broken"].to_numpy(),
                                                   "adv_pred": last["adv_pred"].to_numpy(),
                                                   "norm": last["norm"].to_numpy()}
                    outer.update(1)
                # model-level work (checks, probe, attention figure data), cached like the cells
                if st is None and self._model_pass_pending(lm):
                    st = self._prepare(lm)
                if st is not None:
                    if self.cfg.sanity_samples:
                        self._large_eps_probe(st)
                    if lm.has_attention:
                        self._attention_figure_data(st, lm)
                    self._cache_model_sanity(lm)
                else:
                    self.sanity_rows += self._cached_model_sanity(lm)
        finally:
            outer.close()
        return self._finish(started, metas, sample_frames, att_frames)

    # model-level sanity rows are cached beside the cells so a fully resumed sweep reports them too
    def _sanity_cache(self, lm: LoadedModel) -> Path:
        key = hashlib.sha256(repr((lm.fingerprint, self.data.fingerprint, self.cfg.sanity_samples,
                                   self.cfg.seed)).encode()).hexdigest()[:16]
        return self.store.cells / f"sanity-{key}.parquet"

    def _figure_key(self, lm: LoadedModel) -> str | None:
        plan = self._figure_attack()
        k = min(self.cfg.attention_samples, len(self.data.y))
        if plan is None or k == 0 or not lm.has_attention:
            return None
        return hashlib.sha256(repr((lm.fingerprint, self.data.fingerprint, plan.name, plan.params,
                                    plan.eps, k, self.cfg.seed)).encode()).hexdigest()

    def _model_pass_pending(self, lm: LoadedModel) -> bool:
        figure_key = self._figure_key(lm)
        return not self._sanity_cache(lm).is_file() or (
            figure_key is not None and self.store.read_attention_key(lm.label) != figure_key)

    def _cache_model_sanity(self, lm: LoadedModel) -> None:
        from ..utils import atomic_write_dataframe

        rows = [r for r in self.sanity_rows if r["model"] == lm.label]
        atomic_write_dataframe(self._sanity_cache(lm), pd.DataFrame(rows, columns=SANITY_COLUMNS))

    def _cached_model_sanity(self, lm: LoadedModel) -> list[dict[str, Any]]:
        path = self._sanity_cache(lm)
        return pd.read_parquet(path).to_dict("records") if path.is_file() else []

    def _finish(self, started: str, metas: list[dict[str, Any]], sample_frames: list[pd.DataFrame],
                att_frames: list[pd.DataFrame]) -> pd.DataFrame:
        summary = pd.DataFrame([r for m in metas for r in m["rows"]], columns=SUMMARY_COLUMNS)
        nonempty = [f for f in sample_frames if len(f)]
        samples = pd.concat(nonempty, ignore_index=True) if nonempty else _empty(SAMPLE_COLUMNS)
        worst = worst_case_rows(summary, samples)
        if worst:
            summary = pd.concat([summary, pd.DataFrame(worst, columns=SUMMARY_COLUMNS)], ignore_index=True)
        traits = {a.label: AttackTraits(kind=a.kind, iterative=a.iterative, bounded=a.bounded, norm=a.norm)
                  for a in self.attacks}
        sanity = pd.DataFrame(self.sanity_rows + table_checks(summary, samples, traits),
                              columns=SANITY_COLUMNS)
        attention = pd.concat(att_frames, ignore_index=True) if att_frames else _empty(ATTENTION_COLUMNS)
        tables = {"summary": summary, "samples": samples, "sanity": sanity, "attention": attention}
        published = published_comparison(summary, {lm.label: lm.card for lm in self.models})
        if len(published):  # published vs measured, beside the summary (robustbench_lta.sources)
            tables["published"] = published
        else:  # no stale comparison from an earlier sweep into this folder
            for suffix in (".csv", ".parquet"):
                (self.store.root / f"published{suffix}").unlink(missing_ok=True)
        self.store.write_tables(tables, csv_too=("summary", "sanity", "published"))
        self.store.write_manifest(self._manifest(started, datetime.now(timezone.utc).isoformat(
            timespec="seconds"), summary))
        summary.attrs["out_dir"] = str(self.store.root)
        return summary

    def _manifest(self, started: str, finished: str | None, summary: pd.DataFrame | None = None
                  ) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.cfg.model_dump(mode="json"),
            "seed": self.cfg.seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "device": device_description(self.device),
            "started": started,
            "finished": finished,
            "models": {lm.label: {"source": lm.source, "fingerprint": lm.fingerprint,
                                  "sha256": (lm.card or {}).get("sha256"), "card": lm.card,
                                  "has_attention": lm.has_attention} for lm in self.models},
            "dataset": {"name": self.data.name, "n": int(len(self.data.y)), "classes": self.data.classes,
                        "has_boxes": self.data.boxes is not None, "fingerprint": self.data.fingerprint},
            "attacks": {a.label: {"name": a.name, "params": a.params, "norm": a.norm, "bounded": a.bounded,
                                  "kind": a.kind, "iterative": a.iterative,
                                  "source": getattr(a.prototype, "source", ""),
                                  "eps": [float(e) for e in a.eps]} for a in self.attacks},
            "eps": [float(e) for e in self.cfg.eps_unit()],
            "counts": None if summary is None else {
                "cells_run": self.cells_run, "cells_reused": self.cells_reused,
                "cells_failed": int((summary["status"] == "failed").sum()),
                "cells_invalid": int((summary["status"] == "invalid").sum())},
        }


def st_training(model: nn.Module) -> bool:
    inner = getattr(model, "inner", None)
    return bool(inner is not None and inner.training)


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


# ================================================================================ entry points
def _attack_plans(cfg: SweepConfig, instances: Mapping[str, Attack] | None = None) -> list[AttackPlan]:
    discover([Path(p) for p in cfg.plugins])
    plans = []
    default_eps = tuple(cfg.eps_unit())
    for spec in cfg.attacks:
        label = spec.label or spec.name
        inst = (instances or {}).get(label)
        # building the attack once validates its parameters now, not mid-sweep
        proto = inst if inst is not None else get_attack(spec.name, **spec.params)
        eps = tuple(sorted({e / cfg.eps_scale for e in spec.eps})) if spec.eps is not None else default_eps
        plans.append(AttackPlan(label=label, name=spec.name, params=dict(spec.params), eps=eps,
                                prototype=proto, user_instance=inst is not None))
    return plans


def run_sweep_config(cfg: SweepConfig, *, progress: bool = True, models: Mapping[str, Any] | None = None,
                     data: Any = None, attack_instances: Mapping[str, Attack] | None = None) -> pd.DataFrame:
    """Run a validated sweep config; returns the summary table (also written to ``cfg.out``)."""
    attacks = _attack_plans(cfg, attack_instances)
    loaded: list[LoadedModel] = []
    if models is not None:
        for label, m in models.items():
            spec = m if isinstance(m, nn.Module) else SweepModelSpec(name=label, source=str(m))
            loaded.append(load_sweep_model(spec, label, cfg.seed))
    else:
        for spec in cfg.models:
            loaded.append(load_sweep_model(spec, spec.name, cfg.seed))
    labels = [lm.label for lm in loaded]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise UserError(f"two models share the label {dup[0]!r}: give them distinct names (name: ...)")
    if data is None:
        spec = cfg.data or _card_data_spec(loaded[0].card)
        if spec is None:
            raise UserError("no dataset given and the first model's card names none: pass --data NAME")
        kwargs = dict(spec.kwargs)
        card_classes = (loaded[0].card or {}).get("class_names")
        if spec.name.startswith("imagefolder:") and card_classes and "classes" not in kwargs:
            kwargs["classes"] = card_classes  # a folder of some classes keeps the card's label indices
        ds = load_dataset(spec.name, split="test", root=spec.root, download=spec.download, n=cfg.n,
                          **kwargs)
        for lm in loaded:  # class names and input size against each model's card (sources layer)
            if lm.card and "class_names" in lm.card:
                check_data_against_card(ds.classes, ds.image_size, lm.card, model=lm.label, data=spec.name,
                                        resized=bool(kwargs.get("resize") or kwargs.get("crop")))
        sweep_data = _from_image_dataset(ds, cfg.n)
        sweep_data.fingerprint = {"spec": spec.model_dump(mode="json"), "n": len(sweep_data.y),
                                  "sha256": _tensor_hash(sweep_data.x, sweep_data.y)}
        sweep_data = resolve_data(sweep_data, cfg.n)
    else:
        sweep_data = resolve_data(data, cfg.n)
    out = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="robustbench-lta-"))
    runner = SweepRunner(cfg, loaded, sweep_data, attacks, out, progress=progress)
    return runner.run()


def run_sweep(models: Mapping[str, str | nn.Module] | Sequence[str], attacks: Sequence[str | Attack |
              Mapping[str, Any]], eps: Sequence[float], data: Any = None, *, n: int = 1000,
              batch_size: int = 256, device: str | None = None, seed: int = 0,
              accounting: str = "worst-case", out: str | Path | None = None,
              plugins: Sequence[str | Path] = (), attention_samples: int = 8, sanity_samples: int = 64,
              progress: bool = True, **options: Any) -> pd.DataFrame:
    """Run models x attacks x eps and return the summary table (one row per model x attack x eps).

    Args:
        models: name -> checkpoint path, registry name or any nn.Module mapping [0,1] images to
            logits (a list of paths/names is also accepted; labels are then derived). A module is
            used in place: put in eval mode, moved to the device and, unless
            ``channels_last=False``, to NHWC weights, with its parameters' ``requires_grad`` off.
        attacks: attack names (``"fgsm"``, ``"ta:PGD"``, ``"pgd-linf:steps=20"`` as on the CLI), dicts like
            ``{"name": "pgd-linf", "params": {"steps": 20}, "label": "pgd20"}``, or Attack instances.
        eps: budgets on the [0,1] scale (e.g. ``[0, 2/255, 8/255]``).
        data: a Dataset, a DataLoader, an ``(x, y)`` pair of tensors, or a dataset registry name;
            default: the dataset in the first checkpoint's card.
        out: results folder (default: a new temporary folder, in ``summary.attrs["out_dir"]``).
        options: other :class:`~robustbench_lta.config.SweepConfig` fields: ``amp="bf16"``,
            ``compile=True``, ``channels_last=False``. This function always runs in-process; for Ray
            use ``robustbench-lta sweep --executor ray``.
    """
    if options.get("executor", "local") != "local":
        raise UserError("run_sweep runs in-process: for Ray use `robustbench-lta sweep --executor ray`")
    if not isinstance(models, Mapping):
        models = {str(Path(m).stem) if isinstance(m, str) else type(m).__name__: m for m in models}
    specs, instances = [], {}
    for a in attacks:
        if isinstance(a, Attack):
            specs.append({"name": a.name or type(a).__name__, "params": {}})
            instances[a.name or type(a).__name__] = a
        elif isinstance(a, Mapping):
            specs.append(dict(a))
        else:
            specs.append(parse_attack_string(str(a)))
    data_spec = None
    if isinstance(data, str):
        data_spec, data = {"name": data}, None
    raw = {
        "models": [{"name": k, "source": v if isinstance(v, str) else f"module:{k}"}
                   for k, v in models.items()],
        "attacks": specs, "eps": [float(e) for e in eps], "eps_scale": 1.0, "n": n, "data": data_spec,
        "batch_size": batch_size, "device": device or "auto", "seed": seed, "accounting": accounting,
        "plugins": [str(p) for p in plugins], "attention_samples": attention_samples,
        "sanity_samples": sanity_samples, "out": str(out) if out else None, **options,
    }
    cfg = validate(SweepConfig, raw, "run_sweep arguments")
    for spec_obj in cfg.attacks:  # instances keep their own parameters
        if (spec_obj.label or spec_obj.name) in instances:
            spec_obj.params = dict(instances[spec_obj.label or spec_obj.name].params)
    return run_sweep_config(cfg, progress=progress, models=models, data=data,
                            attack_instances=instances or None)


__all__ = ["run_sweep", "run_sweep_config", "SweepRunner", "LoadedModel", "SweepData", "WORST_CASE"]
