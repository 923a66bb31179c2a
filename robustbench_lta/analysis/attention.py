"""Attention drift between clean and adversarial inputs (engine-side analysis, torch only)."""

from __future__ import annotations

import torch

_EPS = 1e-12


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (base 2, in [0,1]) between maps (N,H,W) that each sum to 1."""
    p = p.flatten(1).double().clamp_min(0)
    q = q.flatten(1).double().clamp_min(0)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (torch.log2(a + _EPS) - torch.log2(b + _EPS)), torch.zeros_like(a)).sum(1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp(0, 1).float()


def box_mass(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Share of each map's mass inside its box (x0,y0,x1,y1 in image pixels, exclusive end)."""
    n, h, w = maps.shape
    ih, iw = image_size
    ys = torch.arange(h, device=maps.device, dtype=torch.float64)
    xs = torch.arange(w, device=maps.device, dtype=torch.float64)
    b = boxes.to(maps.device, torch.float64)
    x0, y0, x1, y1 = (b[:, 0] * w / iw, b[:, 1] * h / ih, b[:, 2] * w / iw, b[:, 3] * h / ih)
    cover_x = (torch.minimum(xs[None] + 1, x1[:, None]) - torch.maximum(xs[None], x0[:, None])).clamp(0, 1)
    cover_y = (torch.minimum(ys[None] + 1, y1[:, None]) - torch.maximum(ys[None], y0[:, None])).clamp(0, 1)
    weight = cover_y[:, :, None] * cover_x[:, None, :]
    return (maps.double() * weight).sum((1, 2)).float()
