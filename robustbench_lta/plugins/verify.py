"""Check what an attack returned before anyone trusts it.

Every adversarial batch goes through :func:`verify_batch`: same shape as the input, floating
dtype, finite, inside the image box [0,1], and (for bounded attacks) inside the eps-ball of the
attack's threat model. A plugin that breaks any of these produces an ``invalid`` result row
instead of an impressive-looking but meaningless robust accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import ThreatModel

#: slack for the [0,1] box and for the eps-ball (float32 rounding of x + delta - x)
RANGE_TOL = 1e-6
BUDGET_TOL = 1e-6
#: a pixel counts as changed (l0) when any channel moved by more than this
L0_CHANGE_TOL = 1e-8


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_batch`: ``ok``, a one-line ``reason`` and per-sample ``norms``."""

    ok: bool
    reason: str
    norms: torch.Tensor | None  # (N,) float32 on CPU, None when they could not be computed


def _norm_name(norm: ThreatModel | str) -> str:
    value = norm.value if isinstance(norm, ThreatModel) else str(norm).lower()
    if value not in {t.value for t in ThreatModel}:
        raise ValueError(f"unknown norm {norm!r}: use one of linf, l2, l0, none")
    return value


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: ThreatModel | str) -> torch.Tensor:
    """Per-sample perturbation size ``x_adv - x`` in ``norm``, as a float32 CPU tensor ``(N,)``.

    linf: max absolute change; l2: Euclidean norm over all of C,H,W; l0: number of pixel positions
    (H,W) where any channel changed by more than 1e-8; none: reported as linf.
    """
    value = _norm_name(norm)
    delta = (x_adv.detach().to(torch.float32) - x.detach().to(torch.float32)).flatten(1)
    if delta.shape[1] == 0:
        return torch.zeros(delta.shape[0], dtype=torch.float32)
    if value in ("linf", "none"):
        out = delta.abs().amax(dim=1)
    elif value == "l2":
        out = delta.pow(2).sum(dim=1).sqrt()
    else:  # l0: count pixel positions, not channel entries
        d = (x_adv.detach().to(torch.float32) - x.detach().to(torch.float32)).abs()
        changed = d > L0_CHANGE_TOL
        if d.dim() >= 3:  # N,C,H,W (or N,C,L): any channel counts once per position
            changed = changed.any(dim=1)
        out = changed.flatten(1).sum(dim=1).to(torch.float32)
    return out.cpu()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def verify_batch(
    x: torch.Tensor,
    x_adv: object,
    eps: float,
    threat_model: ThreatModel | str,
    bounded: bool,
) -> Verification:
    """Check an attack's output; ``reason`` is one human sentence ("" when everything is fine).

    Checks, in order: a tensor of the input's shape, a floating dtype, all values finite, all
    values in [0,1] (tolerance 1e-6), and for bounded attacks with a finite eps and a real norm
    (not ``none``) every sample within ``eps + 1e-6`` in the attack's norm (float32 math).
    """
    norm = _norm_name(threat_model)
    if not isinstance(x_adv, torch.Tensor):
        return Verification(False, f"the attack returned a {type(x_adv).__name__}, not a tensor", None)
    if tuple(x_adv.shape) != tuple(x.shape):
        return Verification(
            False, f"the attack returned shape {tuple(x_adv.shape)} but the input has {tuple(x.shape)}", None
        )
    if not x_adv.is_floating_point():
        return Verification(
            False, f"the attack returned dtype {x_adv.dtype}; a floating dtype is needed", None
        )
    n = x.shape[0]
    flat = x_adv.detach().reshape(n, -1)
    # one pass each for min and max; both propagate NaN, and +-inf shows up in them too
    lo = flat.amin(dim=1) if flat.shape[1] else torch.zeros(n, device=flat.device)
    hi = flat.amax(dim=1) if flat.shape[1] else torch.zeros(n, device=flat.device)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return Verification(False, f"{bad} of {n} samples contain NaN or infinite values", None)
    outside = (lo < -RANGE_TOL) | (hi > 1 + RANGE_TOL)
    norms = perturbation_norms(x, x_adv, norm)
    if bool(outside.any()):
        bad = int(outside.sum())
        return Verification(
            False,
            f"{bad} of {n} samples leave the image range [0,1] "
            f"(min {_fmt(float(lo.min()))}, max {_fmt(float(hi.max()))})",
            norms,
        )
    eps_f = float(eps)
    if bounded and norm != "none" and math.isfinite(eps_f):
        limit = torch.tensor(eps_f, dtype=torch.float32) + BUDGET_TOL
        over = norms > limit
        if bool(over.any()):
            bad = int(over.sum())
            return Verification(
                False,
                f"{bad} of {n} samples exceed the {norm} budget {_fmt(eps_f)} "
                f"(max {_fmt(float(norms.max()))})",
                norms,
            )
    return Verification(True, "", norms)
