"""Sanity checks against the known traps of robustness evaluation, recorded as rows in the results.

Two kinds:
- model checks, run before attacking: deterministic forward, logits (not probabilities), finite
  outputs, the share of samples whose input gradient is zero or non-finite, and a large-eps probe
  (a strong attack at a huge budget must drive accuracy to chance or below);
- table checks, run on the finished tables: eps 0 equals clean accuracy, accuracy not rising with
  eps, iterative attacks at least as strong as single-step ones per sample, and black-box or random
  attacks never stronger than white-box ones (each a classic sign of gradient masking).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..results import SANITY_COLUMNS  # noqa: F401  (re-exported: the sanity table's columns)

# Per-sample disagreement tolerated before a warning becomes a failure (random starts and finite
# step counts make a stronger attack miss a sample now and then without any masking).
_WARN_SHARE = 0.02


@dataclass(frozen=True)
class AttackTraits:
    kind: str          # AttackKind value
    iterative: bool
    bounded: bool
    norm: str


def _row(check: str, model: str, status: str, value: float, message: str, attack: str = "",
         eps: float = math.nan) -> dict[str, Any]:
    return {"check": check, "model": model, "attack": attack, "eps": float(eps), "status": status,
            "value": float(value), "message": message}


def _px(eps: float) -> str:
    return f"{eps * 255:.3g}/255"


# ------------------------------------------------------------------------------ model checks
def model_checks(model_label: str, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, reference: torch.Tensor) -> list[dict[str, Any]]:
    """Determinism, logits-not-probabilities, finiteness and gradient health on a small batch.

    ``reference`` holds the logits of ``x`` from the sweep's clean forward; one more forward must
    reproduce them.
    """
    rows: list[dict[str, Any]] = []
    a = reference.float()
    # one forward serves the determinism check and the input-gradient check below
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    b = logits.detach().float()
    # equal_nan: NaN outputs are the finite-logits row's finding, not a sign of randomness (dropout)
    same = bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True))
    rows.append(_row("deterministic", model_label, "pass" if same else "fail",
                     float((a - b).abs().max()),
                     "two forwards of the same batch agree" if same else
                     "two forwards of the same batch differ: the model is random at test time "
                     "(dropout in train mode, stochastic layers), so attack results are not reliable"))
    finite = bool(torch.isfinite(a).all())
    rows.append(_row("finite-logits", model_label, "pass" if finite else "fail", float(finite),
                     "outputs are finite" if finite else "the model returns NaN or Inf outputs"))
    sums = a.sum(dim=1)
    probs = bool((a >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-3))
    rows.append(_row("returns-logits", model_label, "warn" if probs else "pass", float(probs),
                     "rows are non-negative and sum to 1: the model seems to return probabilities; "
                     "attacks expect logits (cross-entropy on probabilities flattens gradients)"
                     if probs else "outputs look like logits"))
    # input-gradient health: zero or non-finite gradients block white-box attacks
    flat = grad.flatten(1)
    bad = (~torch.isfinite(flat).all(dim=1)) | (flat.abs().amax(dim=1) == 0)
    share = float(bad.float().mean())
    status = "pass" if share == 0 else ("warn" if share <= 0.05 else "fail")
    rows.append(_row("zero-or-nonfinite-gradients", model_label, status, share,
                     f"{share:.1%} of samples have an all-zero or non-finite input gradient"
                     + ("" if share == 0 else ": gradient-based attacks cannot move these samples "
                        "(gradient masking or saturated softmax); trust black-box results more")))
    return rows


def large_eps_row(model_label: str, robust_acc: float, eps: float, num_classes: int) -> dict[str, Any]:
    chance = 1.0 / max(num_classes, 1)
    limit = max(chance, 0.1)
    ok = robust_acc <= limit
    return _row("near-chance-at-large-eps", model_label, "pass" if ok else "fail", robust_acc,
                f"accuracy {robust_acc:.1%} under PGD at eps {_px(eps)}"
                + (" (at or below chance)" if ok else f", above chance ({chance:.0%}): an unbounded-ish "
                   "attack should break almost everything; gradients may be masked or obfuscated"),
                attack="pgd-linf", eps=eps)


#: robust-accuracy points an autocast attack may lose against float32 before it is flagged
PARITY_TOLERANCE = 0.02


def amp_parity_row(model_label: str, acc_amp: float, acc_fp32: float, n: int, dtype: str,
                   eps: float) -> dict[str, Any]:
    gap = acc_amp - acc_fp32
    ok = gap <= PARITY_TOLERANCE
    return _row("amp-parity", model_label, "pass" if ok else "warn", gap,
                f"PGD-10 at eps {_px(eps)} on {n} samples: {100 * acc_amp:.1f}% under {dtype} autocast vs "
                f"{100 * acc_fp32:.1f}% in float32"
                + ("" if ok else f": attacks in {dtype} are weaker on this model; sweep with amp: off"),
                attack="pgd-linf", eps=eps)


# ------------------------------------------------------------------------------ table checks
def table_checks(summary: pd.DataFrame, samples: pd.DataFrame, traits: dict[str, AttackTraits]
                 ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ok = summary[(summary["status"] == "ok") & summary["attack"].isin(list(traits))]
    for (model, attack), part in ok.groupby(["model", "attack"], sort=True):
        t = traits[attack]
        if not t.bounded:
            continue
        part = part.sort_values("eps")
        zero = part[part["eps"] == 0]
        if len(zero):
            gap = float(abs(zero["robust_acc"].iloc[0] - zero["clean_acc"].iloc[0]))
            rows.append(_row("eps0-equals-clean", model, "pass" if gap < 1e-9 else "fail", gap,
                             "accuracy at eps 0 equals clean accuracy" if gap < 1e-9 else
                             f"accuracy at eps 0 differs from clean accuracy by {gap:.2%}: the model "
                             "is not deterministic or the attack changes images at zero budget",
                             attack=attack, eps=0.0))
        if len(part) >= 2:
            acc = part["robust_acc"].to_numpy()
            rises = np.diff(acc)
            worst = float(rises.max())
            if worst <= 1e-12:
                rows.append(_row("monotone-in-eps", model, "pass", worst,
                                 "robust accuracy does not rise with eps", attack=attack))
            else:
                at = part["eps"].to_numpy()[1:][int(rises.argmax())]
                status = "fail" if t.iterative else "warn"
                rows.append(_row(
                    "monotone-in-eps", model, status, worst,
                    f"robust accuracy rises by {worst:.1%} at eps {_px(at)}: "
                    + ("an iterative attack that gets weaker with a larger budget suggests gradient "
                       "masking or too few steps" if t.iterative else
                       "single-step attacks can overshoot at large eps; a known FGSM effect, but a "
                       "strong sign of gradient masking if large"), attack=attack, eps=at))
    if samples.empty:
        return rows
    broken = samples.set_index(["model", "attack", "eps", "index"]).sort_index()["broken"]
    ok_cells = set(map(tuple, ok[["model", "attack", "eps"]].itertuples(index=False, name=None)))
    # cascade accounting: an attack that did not run on what an earlier one broke cannot be compared
    # with it (it would pass by construction); it is still compared with the attacks after it
    fed: set[tuple[str, str, float, str]] = set()
    if "skipped_by" in samples.columns:
        by = samples[samples["skipped_by"].astype(str) != ""]
        fed = set(by[["model", "attack", "eps", "skipped_by"]].drop_duplicates().itertuples(index=False,
                                                                                           name=None))

    def compare(check: str, weak: str, strong: str, explain: str) -> None:
        for model in sorted(ok["model"].unique()):
            for eps in sorted(ok[(ok["model"] == model) & (ok["attack"] == weak)]["eps"].unique()):
                if eps == 0 or (model, strong, eps) not in ok_cells or (model, weak, eps) not in ok_cells:
                    continue
                if (model, strong, eps, weak) in fed:
                    continue
                bw = broken.loc[(model, weak, eps)]
                bs = broken.loc[(model, strong, eps)].reindex(bw.index, fill_value=False)
                share = float((bw.to_numpy() & ~bs.to_numpy()).mean())
                status = "pass" if share == 0 else ("warn" if share <= _WARN_SHARE else "fail")
                msg = (f"{weak} breaks no sample that {strong} misses at eps {_px(eps)}" if share == 0 else
                       f"{weak} stronger than {strong} at eps {_px(eps)} on {share:.1%} of samples: "
                       + explain)
                rows.append(_row(check, model, status, share, msg, attack=f"{weak} vs {strong}", eps=eps))

    def compare_union(weak: str, white: list[str]) -> None:
        for model in sorted(ok["model"].unique()):
            for eps in sorted(ok[(ok["model"] == model) & (ok["attack"] == weak)]["eps"].unique()):
                strong = [a for a in white
                          if (model, a, eps) in ok_cells and (model, a, eps, weak) not in fed]
                if eps == 0 or not strong:
                    continue
                bw = broken.loc[(model, weak, eps)]
                bs = np.zeros(len(bw), dtype=bool)
                for a in strong:
                    bs |= broken.loc[(model, a, eps)].reindex(bw.index, fill_value=False).to_numpy()
                share = float((bw.to_numpy() & ~bs).mean())
                names = ", ".join(strong)
                status = "pass" if share == 0 else ("warn" if share <= _WARN_SHARE else "fail")
                msg = (f"{weak} breaks no sample that the white-box attacks ({names}) miss at eps {_px(eps)}"
                       if share == 0 else
                       f"{weak} breaks {share:.1%} of samples at eps {_px(eps)} that no white-box attack "
                       f"({names}) breaks: a black-box or random attack beating every white-box one is a "
                       "classic sign of gradient masking")
                rows.append(_row("white-box-at-least-black-box", model, status, share, msg,
                                 attack=f"{weak} vs {names}", eps=eps))

    names = sorted(traits)
    single = [a for a in names if traits[a].kind == "white-box" and traits[a].bounded
              and not traits[a].iterative]
    iterative = [a for a in names if traits[a].kind == "white-box" and traits[a].bounded
                 and traits[a].iterative]
    blackbox = [a for a in names if traits[a].kind != "white-box" and traits[a].bounded]
    for weak in single:
        for strong in iterative:
            if traits[weak].norm == traits[strong].norm:
                compare("iterative-at-least-single-step", weak, strong, "possible gradient masking")
    for weak in blackbox:
        # against what every iterative white-box attack of its norm broke together (single-step ones
        # only where no iterative one ran): a query attack out-doing FGSM, or PGD-10 where AutoAttack
        # found the same samples, is a weak white-box attack, not masked gradients
        norm = traits[weak].norm
        white = ([a for a in iterative if traits[a].norm == norm]
                 or [a for a in single if traits[a].norm == norm])
        if white:
            compare_union(weak, white)
    return rows
