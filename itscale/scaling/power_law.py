"""Power-law fits of quality against compute: q(C) = a C^(-b) (+ c).

Scaling laws are straight lines in log space (Kaplan et al. 2020, arXiv 2001.08361; Hoffmann et al.
2022, arXiv 2203.15556, eq. 2 for the irreducible floor c): without a floor, ``log q = log a - b log C``
is fitted by least squares; with ``offset=True`` the floor c is chosen to minimise that same log-space
residual of ``log(q - c)`` (a log-grid scan of the gap min q - c, then a
bounded scalar search around the best), since for a fixed c the rest is
linear. ``q`` must decrease towards its floor (errors, losses, distances); for a quality that grows
(accuracy), fit ``1 - accuracy``. The fitted exponent ``b`` of an error against the number of steps is
a solver's convergence order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PowerLaw(NamedTuple):
    """q(C) = a C^(-b) + c, with ``rmse_log`` the root-mean-square residual of the log-space fit."""

    a: float
    b: float
    c: float = 0.0
    rmse_log: float = 0.0

    def __call__(self, compute):
        return self.a * np.asarray(compute, float) ** (-self.b) + self.c


def _log_fit(log_c, y):
    """Least-squares line y = intercept - b log_c; returns (intercept, b, rmse)."""
    slope, intercept = np.polyfit(log_c, y, 1)
    residual = y - (intercept + slope * log_c)
    return intercept, -slope, float(np.sqrt(np.mean(residual**2)))


def _as_points(compute, quality):
    compute, quality = np.asarray(compute, float).ravel(), np.asarray(quality, float).ravel()
    if compute.shape != quality.shape:
        raise ValueError(f"compute and quality must have the same number of points, got {compute.size} "
                         f"and {quality.size}")
    keep = np.isfinite(compute) & np.isfinite(quality)
    compute, quality = compute[keep], quality[keep]
    if np.any(compute <= 0):
        raise ValueError(f"compute must be positive, got minimum {compute.min()}")
    return compute, quality


def fit_power_law(compute, quality, *, offset: bool = False) -> PowerLaw:
    """Fit q = a C^(-b) (+ c) in log space; non-finite points are ignored.

    Args:
      compute: positive compute values C (NFE, FLOPs, steps).
      quality: the measured values q (lower is better); positive when ``offset=False``.
      offset: also fit the floor c (needs at least 3 points).
    """
    from scipy.optimize import minimize_scalar

    compute, quality = _as_points(compute, quality)
    needed = 3 if offset else 2
    if compute.size < needed:
        raise ValueError(f"fit_power_law needs at least {needed} finite points (offset={offset}), got "
                         f"{compute.size}")
    log_c = np.log(compute)
    if not offset:
        if np.any(quality <= 0):
            raise ValueError("quality must be positive for a fit without offset; pass offset=True to fit "
                             "a floor")
        intercept, b, rmse = _log_fit(log_c, np.log(quality))
        return PowerLaw(float(np.exp(intercept)), float(b), 0.0, rmse)
    low, span = quality.min(), np.ptp(quality)
    if span == 0:
        raise ValueError("quality is constant; there is no power law to fit")

    def residual(c):
        return _log_fit(log_c, np.log(quality - c))[2]

    # The residual is not convex in c: scan gaps low - c on a log grid, then refine around the best.
    gaps = span * np.logspace(-6, 1, 141)
    best = int(np.argmin([residual(low - g) for g in gaps]))
    lo, hi = gaps[max(best - 1, 0)], gaps[min(best + 1, gaps.size - 1)]
    gap = minimize_scalar(lambda g: residual(low - g), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-9 * lo}).x
    floor = low - gap
    intercept, b, rmse = _log_fit(log_c, np.log(quality - floor))
    return PowerLaw(float(np.exp(intercept)), float(b), float(floor), rmse)
