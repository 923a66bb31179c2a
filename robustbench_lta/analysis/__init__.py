"""Attention analysis: how far attention maps move under attack (JS divergence, object-box mass)."""

from .attention import box_mass, js_divergence, upsample_map

__all__ = ["box_mass", "js_divergence", "upsample_map"]
