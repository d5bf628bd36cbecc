"""The Gaussian move x' = mean + std z, z ~ N(0, I), and its log-density log N(x'; mean, std^2 I).

Stochastic refine samplers (Euler–Maruyama, Langevin, restart) report the log-density of the transition
they take in ``info["log_prob"]``; SMC needs it (Singhal et al. 2025, arXiv 2501.06848). It is summed over
every non-batch axis, written in terms of the drawn z (no cancellation in x' - mean), and 0 where
std = 0: a deterministic move, whose density is taken with respect to the point mass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _per_sample(values, ndim):
    """Sum over all axes but the leading batch axis."""
    return jnp.sum(values, axis=tuple(range(1, ndim)))


def log_prob_of_noise(z, std) -> jax.Array:
    """log N(mean + std z; mean, std^2 I) per sample, shape (batch,); ``std`` a scalar or (batch,)."""
    dims = math.prod(z.shape[1:])
    std = jnp.broadcast_to(jnp.asarray(std, z.dtype), z.shape[:1])
    positive = std > 0
    log_std = jnp.log(jnp.where(positive, std, jnp.ones_like(std)))
    value = -0.5 * _per_sample(z**2, z.ndim) - dims * (log_std + 0.5 * math.log(2 * math.pi))
    return jnp.where(positive, value, jnp.zeros_like(value))


def gaussian_move(key, mean, std) -> tuple[jax.Array, jax.Array]:
    """Draw x' = mean + std z and return ``(x', log N(x'; mean, std^2 I))``; ``std`` a scalar or (batch,)."""
    z = jax.random.normal(key, mean.shape, mean.dtype)
    std = jnp.asarray(std, mean.dtype)
    std_b = std.reshape(std.shape + (1,) * (mean.ndim - std.ndim)) if std.ndim else std
    return mean + std_b * z, log_prob_of_noise(z, std)
