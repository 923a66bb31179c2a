"""The loop every projected-gradient attack shares, for built-in and user plugins alike.

It lives in :mod:`robustbench_lta.pgd` (below training, which generates adversarial training examples
with the same code) and is re-exported here for plugin authors: ``attacks/pgd_linf.py`` and
``attacks/pgd_l2.py`` are :func:`robustbench_lta.pgd.pgd` calls.
"""

from __future__ import annotations

from ..pgd import Ball, BestIterate, margin_objective, pgd, projected_gradient_ascent

__all__ = ["Ball", "BestIterate", "margin_objective", "pgd", "projected_gradient_ascent"]
