"""Two-level bootstrap over training seeds and test samples.

A model family gives a 0/1 matrix ``(seeds, samples)`` (robust or not, correct or not) on the SAME
test samples. Its accuracy varies for two reasons: which network training produced (seed) and which
test images were drawn (sample). An interval from the samples alone (Wilson, one-level bootstrap)
hides the first, usually the larger at small scale. Each bootstrap replicate here resamples seeds
with replacement, then samples with replacement, and takes the mean; the percentile interval of
the replicates covers both sources.

For a difference between two families on the same test set, the sample resampling is shared (the
same images for both, paired: image difficulty cancels) while each family's seeds are resampled
independently (its networks were trained independently).

With only 2-3 seeds the seed level is coarse (a percentile interval over resampled seeds cannot
reach beyond the seeds' own range); read the interval as a floor on the uncertainty, not a
calibrated 95 % interval. :class:`Interval` records the number of seeds so pages can say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_p_value", "two_level_bootstrap", "two_level_bootstrap_diff",
           "two_level_diff_replicates"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    seeds: int | tuple[int, int]
    samples: int
    replicates: int

    def as_text(self, scale: float = 100.0, unit: str = " pp") -> str:
        return (f"{self.estimate * scale:.1f}{unit} [{self.low * scale:.1f}, {self.high * scale:.1f}] "
                f"({self.level:.0%}, two-level bootstrap over {self.seeds} seeds x {self.samples} samples)")


def _matrix(values: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{what} must be a (seeds, samples) matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{what} holds NaN or inf values")
    return m


def _replicate_means(m: np.ndarray, seed_idx: np.ndarray, sample_idx: np.ndarray) -> np.ndarray:
    """Mean of ``m[seeds_b][:, samples_b]`` per replicate b, without building the (B,S,N) array."""
    # one replicate = the chosen seeds' rows restricted to the chosen samples' columns, averaged
    out = np.empty(seed_idx.shape[0])
    for b in range(seed_idx.shape[0]):
        out[b] = m[seed_idx[b]][:, sample_idx[b]].mean()
    return out


def two_level_bootstrap(values: np.ndarray, *, replicates: int = 2000, level: float = 0.95,
                        rng: np.random.Generator | int | None = 0) -> Interval:
    """Mean of a (seeds, samples) matrix with a two-level percentile interval (see the module doc)."""
    m = _matrix(values, "values")
    gen = np.random.default_rng(rng)
    s, n = m.shape
    seed_idx = gen.integers(0, s, size=(replicates, s))
    sample_idx = gen.integers(0, n, size=(replicates, n))
    reps = _replicate_means(m, seed_idx, sample_idx)
    a = (1 - level) / 2
    return Interval(float(m.mean()), float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a)), level,
                    s, n, replicates)


def two_level_diff_replicates(a: np.ndarray, b: np.ndarray, *, replicates: int = 2000,
                              rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """The bootstrap replicates of mean(a) - mean(b) (samples paired, seeds independent)."""
    ma, mb = _matrix(a, "a"), _matrix(b, "b")
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"a and b must cover the same samples (columns): {ma.shape[1]} vs {mb.shape[1]}")
    gen = np.random.default_rng(rng)
    n = ma.shape[1]
    sample_idx = gen.integers(0, n, size=(replicates, n))  # shared: paired over images
    ia = gen.integers(0, ma.shape[0], size=(replicates, ma.shape[0]))
    ib = gen.integers(0, mb.shape[0], size=(replicates, mb.shape[0]))
    return _replicate_means(ma, ia, sample_idx) - _replicate_means(mb, ib, sample_idx)


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from difference replicates: twice the smaller tail at 0.

    The +1 in numerator and denominator keeps it above 0 (a p-value of 0 from B replicates only
    says p < 1/B).
    """
    r = np.asarray(replicates, dtype=np.float64)
    tail = min(int((r <= 0).sum()), int((r >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (r.size + 1)))


def two_level_bootstrap_diff(a: np.ndarray, b: np.ndarray, *, replicates: int = 2000, level: float = 0.95,
                             rng: np.random.Generator | int | None = 0) -> Interval:
    """mean(a) - mean(b) for two families on the same samples (columns aligned), two-level interval."""
    reps = two_level_diff_replicates(a, b, replicates=replicates, rng=rng)
    ma, mb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    q = (1 - level) / 2
    low, high = float(np.quantile(reps, q)), float(np.quantile(reps, 1 - q))
    return Interval(float(ma.mean() - mb.mean()), low, high, level, (ma.shape[0], mb.shape[0]), ma.shape[1],
                    replicates)
