"""Exponential-integrator pieces shared by DDIM, DPM-Solver++ and UniPC (data prediction).

With lambda = log(alpha / sigma) the flow ODE has the exact variation-of-constants solution from t to s
(Lu et al. 2022, DPM-Solver++, arXiv 2211.01095, eq. 9):

    x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^lambda x0_hat(x_lambda) d lambda.

Freezing x0_hat at an estimate ``d`` gives the update used by every solver here,

    x_s = ratio x_t + weight d,   ratio = sigma_s / sigma_t,   weight = alpha_s - ratio alpha_t

(DDIM when d = x0_hat(x_t)), written with ratios of alpha and sigma instead of e^{-h} so that
lambda = +-inf at the grid's ends (sigma(t_min) = 0 or alpha(t_max) = 0) needs no special case.
Higher-order solvers only change ``d``. These functions compute the scalar coefficients for whole
arrays of grid times (the solvers' schedules).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itscale.paths.path import Path


def half_log_snr(path: Path, t) -> jax.Array:
    """lambda(t) = log(alpha / sigma), the time variable of DPM-Solver (Lu et al. 2022, arXiv 2206.00927)."""
    return (0.5 * path.log_snr(t)).astype(jnp.result_type(t))


def update_coefficients(path: Path, t, s) -> tuple[jax.Array, jax.Array]:
    """(ratio, weight) of x_s = ratio x_t + weight d: sigma_s / sigma_t and alpha_s - ratio alpha_t."""
    ratio = path.sigma(s) / path.sigma(t)
    return ratio, path.alpha(s) - ratio * path.alpha(t)


def two_step_weight(path: Path, t_prev, t, s, has_prev) -> jax.Array:
    """w of the DPM-Solver++(2M) estimate d = x0 + w (x0 - x0_prev), w = 1 / (2 r), r = h_prev / h
    (arXiv 2211.01095, Alg. 2); w = 0 (first order) without a previous evaluation or when a log-SNR step
    is infinite (a grid end with sigma = 0 or alpha = 0)."""
    lam_prev, lam_t, lam_s = (half_log_snr(path, u) for u in (t_prev, t, s))
    h, h_prev = lam_s - lam_t, lam_t - lam_prev
    ok = has_prev & jnp.isfinite(h) & jnp.isfinite(h_prev)
    return jnp.where(ok, 0.5 * h / jnp.where(ok, h_prev, 1.0), 0.0)


def grid_neighbours(times) -> tuple[jax.Array, ...]:
    """For the n steps of a grid: (index i, t_{i-2}, t_{i-1}, t_i, t_{i+1}), clipped at the start."""
    n = times.shape[0] - 1
    index = jnp.arange(n)
    return (index, times[jnp.maximum(index - 2, 0)], times[jnp.maximum(index - 1, 0)], times[:-1], times[1:])
