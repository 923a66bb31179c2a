"""Attention drift between clean and adversarial inputs (computed by the engine during a sweep).

Pure torch, batched, float32: the engine calls these on every attacked batch of an attention
model, so they must cost little next to the forward pass that produced the maps.
"""

from __future__ import annotations

import math

import torch

_LN2 = math.log(2.0)


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """sum_i p_i ln p_i per row (0 ln 0 = 0)."""
    return torch.special.xlogy(p, p).sum(dim=1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence, base 2 (so in [0,1]), between maps (N,H,W) each summing to 1.

    Uses JS = (sum p ln p + sum q ln q) / 2 - sum m ln m with m = (p + q) / 2, which needs three
    elementwise passes instead of two KL divergences with their logs of ratios.
    """
    p = p.flatten(1).float().clamp_min(0)
    q = q.flatten(1).float().clamp_min(0)
    m = 0.5 * (p + q)
    js = 0.5 * (_neg_entropy(p) + _neg_entropy(q)) - _neg_entropy(m)
    return (js / _LN2).clamp(0.0, 1.0)


def box_mass(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Share of each map's mass inside its object box.

    ``maps`` (N,h,w) sum to 1; ``boxes`` (N,4) are ``(x0, y0, x1, y1)`` in input-image pixels with
    exclusive ends; ``image_size`` is the input's (H, W). A map may be coarser than the image:
    the box is scaled to the map grid and partially covered cells count by their covered fraction.
    """
    _, h, w = maps.shape
    ih, iw = image_size
    b = boxes.to(device=maps.device, dtype=torch.float32)
    ys = torch.arange(h, device=maps.device, dtype=torch.float32)
    xs = torch.arange(w, device=maps.device, dtype=torch.float32)
    x0, x1 = b[:, 0:1] * (w / iw), b[:, 2:3] * (w / iw)
    y0, y1 = b[:, 1:2] * (h / ih), b[:, 3:4] * (h / ih)
    cover_x = (torch.minimum(xs + 1, x1) - torch.maximum(xs, x0)).clamp(0, 1)  # (N,w)
    cover_y = (torch.minimum(ys + 1, y1) - torch.maximum(ys, y0)).clamp(0, 1)  # (N,h)
    return torch.einsum("nhw,nh,nw->n", maps.float(), cover_y, cover_x)


def upsample_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of attention maps to ``size`` (H, W) for overlays on the input image.

    Accepts (h,w) or (N,h,w); returns the same rank at the new size, rescaled so each map still sums
    to 1 (interpolation changes the total mass by the area ratio and slightly at the borders).
    """
    squeeze = maps.dim() == 2
    m = maps.float()[None] if squeeze else maps.float()
    up = torch.nn.functional.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]
    total = up.flatten(1).sum(dim=1).clamp_min(1e-12)
    up = up / total[:, None, None]
    return up[0] if squeeze else up
