"""The report's statistics, each through scipy.stats or statsmodels (nothing hand-derived).

- Wilson score interval for one accuracy: ``statsmodels.stats.proportion.proportion_confint``.
- Two models on the same samples (paired): exact McNemar test on the discordant pairs
  (``statsmodels.stats.contingency_tables.mcnemar(exact=True)``), and a bootstrap interval of the
  difference resampling samples (``scipy.stats.bootstrap(paired=True)``, BCa, seeded).
- Two models on different samples (unpaired): Fisher's exact test (``scipy.stats.fisher_exact``)
  and Newcombe's hybrid score interval (``statsmodels ... confint_proportions_2indep(method="newcomb")``).
- Holm's step-down correction over one comparison's family of tests (clean accuracy and every
  budget of one pair of models): ``statsmodels.stats.multitest.multipletests(method="holm")``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

ALPHA = 0.05
N_BOOT = 4000
SEED = 0


def wilson(k: float, n: float, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (NaNs when ``n`` is 0 or ``k`` unknown)."""
    from statsmodels.stats.proportion import proportion_confint

    if n is None or n <= 0 or k is None or not np.isfinite(k):
        return (math.nan, math.nan)
    lo, hi = proportion_confint(int(round(k)), int(n), alpha=alpha, method="wilson")
    return (float(lo), float(hi))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Exact McNemar test of paired 0/1 outcomes: (p-value, #a-only successes, #b-only successes)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return (1.0, 0, 0)
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    return (float(mcnemar(table, exact=True).pvalue), only_a, only_b)


def paired_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, alpha: float = ALPHA
) -> tuple[float, float]:
    """Bootstrap (BCa) interval of mean(a) - mean(b) for paired outcomes, resampling samples."""
    from scipy.stats import bootstrap

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if len(a) == 0:
        return (math.nan, math.nan)
    d = a - b
    if np.all(d == d[0]):  # no variation: every resample gives the same difference
        return (float(d[0]), float(d[0]))
    def interval(method: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's degenerate-BCa warning: the fallback below handles it
            res = bootstrap((d,), np.mean, confidence_level=1 - alpha, n_resamples=n_boot, method=method,
                            rng=np.random.default_rng(seed), batch=500)
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    lo, hi = interval("BCa")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = interval("percentile")
    return (lo, hi)


def unpaired_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test (two-sided) of k1/n1 against k2/n2 from different samples."""
    from scipy.stats import fisher_exact

    if n1 <= 0 or n2 <= 0:
        return math.nan
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Newcombe's hybrid score interval of k1/n1 - k2/n2 (independent samples)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan)
    lo, hi = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff", alpha=alpha)
    return (float(lo), float(hi))


def holm(pvalues: list[float], alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction: (rejected?, adjusted p) per test; NaN p-values never reject."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    ok = np.isfinite(p)
    reject = np.zeros(len(p), dtype=bool)
    adjusted = np.full(len(p), np.nan)
    if ok.any():
        r, adj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = r, adj
    return [bool(x) for x in reject], [float(x) for x in adjusted]
