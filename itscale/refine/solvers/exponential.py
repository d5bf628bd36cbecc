"""Exponential-integrator pieces shared by DDIM, DPM-Solver++ and UniPC (data prediction).

With lambda = log(alpha / sigma) the flow ODE has the exact variation-of-constants solution from t to s
(Lu et al. 2022, DPM-Solver++, arXiv 2211.01095, eq. 9):

    x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^lambda x0_hat(x_lambda) d lambda.

Freezing x0_hat at an estimate ``d`` gives the update used by every solver here,

    x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) d    (DDIM: d = x0_hat(x_t)),

written with ratios of alpha and sigma instead of e^{-h} so that lambda = +-inf at the grid's ends
(sigma(t_min) = 0 or alpha(t_max) = 0) needs no special case. Higher-order solvers only change ``d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itscale.refine.solvers.base import Model


def data_update(model: Model, x, d, t, s) -> jax.Array:
    """x_s = (sigma_s / sigma_t) x + (alpha_s - sigma_s alpha_t / sigma_t) d."""
    alpha_t, sigma_t = model.alpha_sigma(t, x)
    alpha_s, sigma_s = model.alpha_sigma(s, x)
    ratio = sigma_s / sigma_t
    return ratio * x + (alpha_s - ratio * alpha_t) * d


def two_step_estimate(model: Model, x, x0, x0_prev, t_prev, t, s, has_prev) -> jax.Array:
    """DPM-Solver++(2M) estimate d = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h (arXiv 2211.01095, Alg. 2).

    Falls back to d = x0 (first order) without a previous evaluation or when a log-SNR step is
    infinite (a grid end with sigma = 0 or alpha = 0).
    """
    lam_prev, lam_t, lam_s = (model.half_log_snr(u, x) for u in (t_prev, t, s))
    h, h_prev = lam_s - lam_t, lam_t - lam_prev
    ok = has_prev & jnp.isfinite(h) & jnp.isfinite(h_prev)
    half_inv_r = jnp.where(ok, 0.5 * h / jnp.where(ok, h_prev, 1.0), 0.0)
    return x0 + half_inv_r * (x0 - x0_prev)
