"""Per-model work beside the cells: model sanity checks, the large-eps probe, attention figure data.

Kept cheap on purpose (a small sweep must not be dominated by it): the checks use a few samples,
the probe is PGD that stops on every sample it has broken, and the figure data covers only the few
clean-correct images the report shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..plugins.registry import get_attack
from ..plugins.strength import strongest_family
from ..results import figure_eps_indices
from ..utils import derive_seed
from .inputs import SampleSource
from .plan import AttackPlan
from .runtime import PreparedModel
from .sanity import amp_parity_row, large_eps_row, model_checks
from .unit import make_attack

LARGE_EPS = 128 / 255
CHECK_SAMPLES = 16  # determinism / logits / gradient-health checks need few samples
PROBE_STEPS = 10
PARITY_EPS = 8 / 255


@dataclass(frozen=True)
class ModelPassSettings:
    batch_size: int
    seed: int
    sanity_samples: int
    attention_samples: int
    figure_attack: AttackPlan | None


@dataclass
class ModelPassResult:
    sanity: list[dict[str, Any]]
    figure: dict[str, np.ndarray] | None
    forward: int
    backward: int


def figure_attack(attacks: list[AttackPlan]) -> AttackPlan | None:
    """The attack whose adversarial maps the report shows: the strongest L-inf family swept.

    Maps under a weak attack (FGSM) understate how far attention moves under the attack page 1 names,
    so the family ranking is the report's own (plugins/strength.py: strong, multi-step, single-step);
    within a family, the attack with more budgets, then sweep order. Its plan keeps only the budgets
    the figure shows.
    """
    bounded = [a for a in attacks if a.bounded and a.norm == "linf"]
    best = strongest_family([(a.label, a.name, a.params, sum(e > 0 for e in a.eps)) for a in bounded])
    plan = next((a for a in bounded if a.label == best), None)
    return figure_plan(plan) if plan is not None else None


def figure_plan(plan: AttackPlan) -> AttackPlan:
    """``plan`` with only the budgets the figure shows (results.figure_eps_indices): the others would
    be attacked and stored for nothing."""
    return dataclasses.replace(plan, eps=tuple(plan.eps[i] for i in figure_eps_indices(plan.eps)))


def _first_correct(pm: PreparedModel, source: SampleSource, want: int, batch_size: int,
                   known: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, int]:
    """The first ``want`` clean-correct samples in sample order (positions, x, y) and how many
    samples it took to find them (up to the last one picked, or all looked at when fewer exist).

    ``known``: clean-correct flags of positions ``0..len(known)-1`` from the units' clean passes
    (same model, same samples); the clean forward runs only past them, while too few are found.
    """
    flags = [] if known is None else [np.asarray(known, dtype=bool)]
    at = 0 if known is None else len(known)
    found = 0 if known is None else int(known.sum())
    with torch.inference_mode(), pm.model.float32():  # float32, as the units' clean pass it continues
        while found < want and at < source.n:
            positions = np.arange(at, min(source.n, at + batch_size))
            for _pos, x, y in source.batches(positions, batch_size, pm.device):
                ok = (pm.model(x).argmax(1) == y).cpu().numpy()
                flags.append(ok)
                found += int(ok.sum())
            at = int(positions[-1]) + 1
    correct = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    pos = np.flatnonzero(correct)[:want].astype(np.int64)
    seen = int(pos[-1]) + 1 if len(pos) == want and want > 0 else len(correct)
    if not len(pos):
        empty = torch.zeros(0)
        return pos, empty, empty.long(), seen
    xs, ys = [], []
    for _p, x, y in source.batches(pos, batch_size, pm.device):
        xs.append(x)
        ys.append(y)
    return pos, torch.cat(xs), torch.cat(ys), seen


def probe_samples(sanity_samples: int, n: int) -> int:
    """Samples the large-eps probe attacks: ``sanity_samples``, but at most n / 8 (at least 16).

    The probe only asks whether a huge budget brings accuracy near chance; 16 samples answer that
    for a masked model (which stays far above it), and a small sweep is not dominated by the check.
    """
    return min(sanity_samples, max(CHECK_SAMPLES, n // 8))


def measure_amp_parity(pm: PreparedModel, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, Any]:
    """The same PGD-10 at 8/255 under the sweep's autocast and in float32, on the probe samples.

    Reduced precision can weaken an attack (gradients rounded to bf16, a saturated softmax); the row
    (:func:`~.sanity.amp_parity_row`) warns when the autocast attack leaves clearly more accuracy.
    Predictions are float32 either way, as in every unit.
    """
    accs = []
    for precise in (False, True):
        probe = get_attack("pgd-linf", seed=derive_seed(seed, pm.loaded.sha256, "amp-parity"),
                           steps=PROBE_STEPS)
        with pm.model.float32() if precise else contextlib.nullcontext():
            adv = probe.perturb(pm.model, x, y, PARITY_EPS)
        with torch.inference_mode(), pm.model.float32():
            accs.append(float((pm.model(adv).argmax(1) == y).float().mean()))
    return amp_parity_row(pm.label, accs[0], accs[1], len(y), str(pm.model.amp_dtype).removeprefix("torch."),
                          PARITY_EPS)


def run_model_pass(pm: PreparedModel, source: SampleSource, settings: ModelPassSettings,
                   known_correct: np.ndarray | None = None) -> ModelPassResult:
    """Checks, probe and figure data of one model; ``known_correct`` as in :func:`_first_correct`."""
    f0, b0 = pm.model.work()
    rows: list[dict[str, Any]] = []
    k = min(source.n, CHECK_SAMPLES)
    _pos, x, y = next(source.batches(np.arange(k), k, pm.device))
    with torch.inference_mode():
        reference = pm.model(x)
    rows += model_checks(pm.label, pm.model, x, y, reference)
    want = max(settings.sanity_samples, settings.attention_samples if pm.has_attention else 0)
    pos, xc, yc, seen = _first_correct(pm, source, want, settings.batch_size, known_correct)
    if settings.sanity_samples and len(pos):
        n = min(probe_samples(settings.sanity_samples, source.n), len(pos))
        probe = get_attack("pgd-linf", seed=derive_seed(settings.seed, pm.loaded.sha256, "probe"),
                           steps=PROBE_STEPS)
        adv = probe.perturb(pm.model, xc[:n], yc[:n], LARGE_EPS)
        with torch.inference_mode(), pm.model.float32():  # a counted prediction: float32, as in units
            acc = float((pm.model(adv).argmax(1) == yc[:n]).float().mean())
        rows.append(large_eps_row(pm.label, acc, LARGE_EPS, pm.num_classes))
        if pm.model.amp_dtype is not None:
            rows.append(measure_amp_parity(pm, xc[:n], yc[:n], settings.seed))
    figure = None
    plan = settings.figure_attack
    k = min(settings.attention_samples, len(pos))
    if pm.has_attention and plan is not None and k > 0:
        figure = _figure_arrays(pm, source, plan, pos[:k], xc[:k], yc[:k], settings.seed, seen,
                                settings.batch_size)
    pm.model.eval()
    # the figure's attack is a plugin too: whatever it left on the model is undone before the next
    # unit this process runs on it (Ray runs units after a model pass), and its maps are not shown
    state = pm.state.changed() if pm.state is not None else []
    weights = pm.guard.changed()
    if state or weights:
        if pm.state is not None:
            pm.state.restore()
        pm.guard.restore()
        figure = None
        what = state[0] if state else f"weight {weights[0]!r}"
        warnings.warn(f"{pm.label}: the attention-figure attack {plan.label if plan else ''} changed the "
                      f"model ({what}): model restored, its attention maps left out of the report",
                      UserWarning, stacklevel=2)
    f1, b1 = pm.model.work()
    return ModelPassResult(rows, figure, f1 - f0, b1 - b0)


def _figure_arrays(pm: PreparedModel, source: SampleSource, plan: AttackPlan, pos: np.ndarray,
                   x: torch.Tensor, y: torch.Tensor, seed: int, seen: int,
                   batch_size: int) -> dict[str, np.ndarray]:
    attack = make_attack(plan, derive_seed(seed, pm.loaded.sha256, plan.label, "figure"))
    if plan.multi_eps:
        advs = list(attack.perturb_many(pm.model, x.clone(), y, list(plan.eps)))
    else:
        # a copy each: an attack writing into its input must not change the clean images and maps
        advs = [x.clone() if e == 0 else attack.perturb(pm.model, x.clone(), y, e) for e in plan.eps]
    pm.model.eval()
    # clean and every budget's images in as few forwards as the batch size allows: a forward of a
    # handful of images costs nearly what one of a full batch does
    images = torch.cat([x, *(a.detach().float().contiguous() for a in advs)])
    with torch.inference_mode(), pm.model.float32():  # the maps and predictions the units record
        parts = [pm.model.logits_and_maps(images[s:s + batch_size])
                 for s in range(0, len(images), batch_size)]
    logits_all = torch.cat([p[0] for p in parts])
    maps_all = [torch.cat([p[1][j] for p in parts]).cpu().numpy() for j in range(len(parts[0][1]))]
    k = len(x)
    clean_logits, clean_maps = logits_all[:k], [m[:k] for m in maps_all]
    adv_preds = [logits_all[k * (i + 1):k * (i + 2)].argmax(1).cpu().numpy() for i in range(len(advs))]
    adv_maps = [[m[k * (i + 1):k * (i + 2)] for m in maps_all] for i in range(len(advs))]
    arrays: dict[str, np.ndarray] = {
        "attack": np.array(plan.label), "index": source.index[pos],
        "labels": y.cpu().numpy(), "images": x.float().cpu().numpy(),
        "eps": np.array(plan.eps, dtype=np.float64), "clean_pred": clean_logits.argmax(1).cpu().numpy(),
        "adv_images": torch.stack([a.detach().float().cpu() for a in advs]).numpy(),
        "adv_pred": np.stack(adv_preds),
        # how the images were picked, for the report's caption
        "selection": np.array(f"the first {len(pos)} clean-correct samples in sample order "
                              f"(of the first {seen} looked at)"),
    }
    for j in range(len(clean_maps)):
        arrays[f"clean_level{j}"] = clean_maps[j]
        arrays[f"adv_level{j}"] = np.stack([m[j] for m in adv_maps])
    if source.boxes is not None:
        arrays["boxes"] = source.boxes[pos]
    return arrays
