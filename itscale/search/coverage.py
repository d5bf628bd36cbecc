"""Coverage: the unbiased pass@k estimator and the coverage law C(k) = exp(a k^b).

pass@k (Chen et al. 2021, arXiv 2107.03374): with n samples of which c are correct,
pass@k = 1 − C(n − c, k) / C(n, k) is the unbiased estimate of P(at least one of k samples is correct).
It is computed as 1 − Π_{i=n−c+1}^{n} (1 − k / i) in float64 on the host (a sum of log1p terms), which
stays accurate where the binomial coefficients overflow. These are evaluation metrics over counts,
so they use NumPy, not JAX.

Coverage law (Brown et al. 2024, "Large Language Monkeys", arXiv 2407.21787): coverage with k samples
is well fitted by log C(k) = a k^b (a < 0, b < 0). :func:`fit_coverage_law` fits it by least squares on
log(−log C) = log(−a) + b log k over the points with 0 < C < 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(-np.expm1(np.sum(np.log1p(-k / i))))


def pass_at_k(num_samples, num_correct, k: int):
    """Unbiased pass@k for each (n, c) pair (arrays broadcast); float64, shape of the broadcast."""
    n, c = np.broadcast_arrays(np.asarray(num_samples), np.asarray(num_correct))
    for name, value in (("num_samples", n), ("num_correct", c)):
        if not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"{name} must be integer counts, got dtype {value.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("num_correct must lie in [0, num_samples]")
    if np.any(n < k):
        raise ValueError(f"pass@k needs num_samples >= k = {k}, got num_samples = {n.min()}")
    out = np.vectorize(_pass_at_k_one, otypes=[np.float64])(n, c, int(k))
    return out if out.ndim else float(out)


class CoverageLaw(NamedTuple):
    """C(k) = exp(a k^b)."""

    a: float
    b: float

    def __call__(self, k):
        return np.exp(self.a * np.asarray(k, np.float64) ** self.b)


def fit_coverage_law(k, coverage) -> CoverageLaw:
    """Least-squares fit of log(−log C) = log(−a) + b log k on the points with 0 < C < 1."""
    k, coverage = np.asarray(k, np.float64), np.asarray(coverage, np.float64)
    if k.shape != coverage.shape or k.ndim != 1:
        raise ValueError(f"k and coverage must be 1-d arrays of the same shape, got {k.shape} and "
                         f"{coverage.shape}")
    keep = (coverage > 0) & (coverage < 1) & (k > 0)
    if np.count_nonzero(keep) < 2:
        raise ValueError("fit_coverage_law needs at least two points with 0 < coverage < 1 and k > 0")
    slope, intercept = np.polyfit(np.log(k[keep]), np.log(-np.log(coverage[keep])), 1)
    return CoverageLaw(a=float(-np.exp(intercept)), b=float(slope))
