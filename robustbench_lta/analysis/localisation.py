"""Does the attention find the object better than gradient saliency does? Pointing game and IoU vs boxes.

For images with object boxes (cluttered-digits), every map of a model is scored against the box:

* maps: each attention level, bilinearly upsampled to the input size (``attention-l1``...); the
  input-gradient saliency ``|d logit_c / dx|`` (max over colour channels; Simonyan et al. 2014) for
  the class ``c`` the model predicts on that image; and SmoothGrad (Smilkov et al. 2017), the same
  saliency averaged over ``smoothgrad_samples`` copies with Gaussian noise of std
  ``smoothgrad_sigma`` (on the [0,1] scale). Baselines without attention get the two saliencies only,
  so a matched baseline's saliency is the yardstick for the attention maps.
* pointing game: 1 if the map's maximum (first on ties) lies inside the box (no tolerance: 32x32).
* IoU: the map binarised to its top ``top_fraction`` of pixels (default 20 %, close to a digit's box
  area of 14-32 % of a 32x32 image), intersection over union with the box.
* conditions: the clean image, and FGSM at each eps of ``fgsm_eps`` aimed at that same model
  (cross-entropy with the true label), so each model's maps are scored on its own adversarial images.

:func:`localisation_table` returns one row per (model, map, condition) with the means and a 95 %
normal interval over images; :func:`localisation_per_sample` the per-image scores behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attention import upsample_map

__all__ = ["box_mask", "fgsm", "gradient_saliency", "localisation_per_sample", "localisation_table",
           "pointing_game", "smoothgrad", "topk_iou"]


def box_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,H,W) bool masks of ``(x0, y0, x1, y1)`` pixel boxes with exclusive ends."""
    h, w = size
    b = boxes.long()
    ys = torch.arange(h, device=boxes.device)[None, :, None]
    xs = torch.arange(w, device=boxes.device)[None, None, :]
    return ((ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None])
            & (xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None]))


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """1.0 where the map's (first) maximum lies inside the box, else 0.0; maps (N,H,W) at input size."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(1)
    inside = box_mask(boxes, (h, w)).reshape(n, -1)
    return inside.gather(1, flat[:, None])[:, 0].float()


def topk_iou(maps: torch.Tensor, boxes: torch.Tensor, top_fraction: float = 0.2) -> torch.Tensor:
    """IoU of each map's top ``top_fraction`` pixels (by value; ties broken by position) with its box."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    n, h, w = maps.shape
    k = max(1, int(round(top_fraction * h * w)))
    flat = maps.reshape(n, -1).float()
    top = torch.zeros_like(flat, dtype=torch.bool).scatter(1, flat.topk(k, dim=1).indices, True)
    box = box_mask(boxes, (h, w)).reshape(n, -1)
    inter = (top & box).sum(1).float()
    union = (top | box).sum(1).float().clamp_min(1)
    return inter / union


def gradient_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``max_c |d logit_target / dx_c|`` per pixel, (N,H,W); model weights get no gradients."""
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x_in)
    return grad.abs().amax(dim=1)


def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, samples: int = 16,
               sigma: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
    """SmoothGrad: the gradient saliency averaged over ``samples`` noisy copies (noise std ``sigma``)."""
    total = torch.zeros(x.shape[0], *x.shape[2:], device=x.device)
    for _ in range(samples):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
        total += gradient_saliency(model, x + noise, target)
    return total / max(samples, 1)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM on the cross-entropy with the true label, clipped to [0,1]."""
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def _maps(model: nn.Module, x: torch.Tensor, smoothgrad_samples: int, smoothgrad_sigma: float,
          seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    size = tuple(x.shape[-2:])
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if getattr(model, "has_attention", False):
            logits, att = model(x, return_attention=True)
            for k, m in enumerate(att):
                out[f"attention-l{k + 1}"] = upsample_map(m.float(), size)
        else:
            logits = model(x)
    pred = logits.argmax(1)
    out["gradient"] = gradient_saliency(model, x, pred)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out["smoothgrad"] = smoothgrad(model, x, pred, smoothgrad_samples, smoothgrad_sigma, gen)
    return out, pred


def localisation_per_sample(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                            boxes: torch.Tensor, *, fgsm_eps: Sequence[float] = (2 / 255,),
                            top_fraction: float = 0.2, smoothgrad_samples: int = 16,
                            smoothgrad_sigma: float = 0.15, batch_size: int = 128,
                            seed: int = 0) -> pd.DataFrame:
    """Per image, model, map and condition: pointing-game hit, top-k IoU, correct prediction.

    ``x`` (N,C,H,W) in [0,1], ``y`` (N,), ``boxes`` (N,4) ``(x0, y0, x1, y1)`` pixels, exclusive ends.
    Models are put in eval mode; their weights are not changed.
    """
    if boxes is None or len(boxes) != len(x):
        raise ValueError("localisation needs one (x0, y0, x1, y1) box per image (e.g. cluttered-digits)")
    frames = []
    for label, model in models.items():
        model.eval()
        for start in range(0, len(x), batch_size):
            part = slice(start, start + batch_size)
            xb, yb, bb = x[part], y[part], boxes[part]
            conditions = [("clean", 0.0, xb)] + [("fgsm", float(e), fgsm(model, xb, yb, float(e)))
                                                  for e in fgsm_eps]
            for cond, eps, xc in conditions:
                maps, pred = _maps(model, xc, smoothgrad_samples, smoothgrad_sigma, seed + start)
                for method, m in maps.items():
                    frames.append(pd.DataFrame({
                        "model": label, "method": method, "condition": cond, "eps": eps,
                        "index": np.arange(start, start + len(xb)),
                        "correct": (pred == yb).cpu().numpy(),
                        "pointing": pointing_game(m, bb).cpu().numpy(),
                        "iou": topk_iou(m, bb, top_fraction).cpu().numpy()}))
    return pd.concat(frames, ignore_index=True)


def localisation_table(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                       boxes: torch.Tensor, **kw) -> pd.DataFrame:
    """Mean pointing game and IoU per (model, map, condition, eps), with 95 % normal half-widths.

    Keywords are those of :func:`localisation_per_sample`.
    """
    per = localisation_per_sample(models, x, y, boxes, **kw)
    rows = []
    for (model, method, cond, eps), d in per.groupby(["model", "method", "condition", "eps"], sort=False):
        n = len(d)
        row = {"model": model, "method": method, "condition": cond, "eps_255": round(eps * 255, 3), "n": n,
               "accuracy": d["correct"].mean()}
        for col in ("pointing", "iou"):
            v = d[col].to_numpy(float)
            row[col] = v.mean()
            row[f"{col}_ci"] = 1.96 * v.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
