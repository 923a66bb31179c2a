"""Attention analysis: how far attention maps move under attack (JS divergence, object-box mass),
localisation vs gradient saliency (pointing game, top-k IoU), and the two-level (seeds x samples)
bootstrap for model families."""

from .attention import box_mass, js_divergence, upsample_map
from .bootstrap import Interval, two_level_bootstrap, two_level_bootstrap_diff

__all__ = ["Interval", "box_mass", "js_divergence", "two_level_bootstrap", "two_level_bootstrap_diff",
           "upsample_map"]
