"""Resampling: pure ``(key, log_weights) -> indices`` maps, ESS and log-weight normalisation.

Every resampler draws ``num_samples`` ancestor indices with E[#copies of i] = num_samples · w_i,
where w = softmax(log_weights), by inverting the cumulative weights with ``searchsorted`` on
uniforms (Douc, Cappé & Moulines 2005, "Comparison of resampling schemes for particle filtering",
arXiv cs/0507025; the same layout as ``blackjax.smc.resampling``):

* ``multinomial``: M independent uniforms u_j ~ U[0, 1).
* ``stratified``: one uniform per stratum, u_j = (j + U_j) / M.
* ``systematic``: one shared uniform, u_j = (j + U) / M (lowest variance in practice).
* ``residual``: floor(M w_i) deterministic copies, the remaining R = M − Σ floor(M w_i) drawn
  multinomially from the residual weights M w_i − floor(M w_i).

Log-weights may be ``-inf`` (impossible particles): such a particle is never chosen, also under
float rounding of the cumulative sum. When *every* weight is ``-inf`` there is no distribution to
resample from; the resamplers then fall back to uniform weights (never NaN) and
:func:`all_impossible` reports the case so callers can surface it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from itscale.core import checks


def _as_log_weights(log_weights) -> jax.Array:
    """Log-weights with NaN read as ``-inf`` (an undefined weight is an impossible particle)."""
    log_weights = jnp.asarray(log_weights)
    return jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)


def all_impossible(log_weights) -> jax.Array:
    """True when no particle has a positive weight (every log-weight is ``-inf`` or NaN)."""
    return ~jnp.any(jnp.asarray(log_weights) > -jnp.inf, axis=-1)


def log_normalize(log_weights) -> jax.Array:
    """log w_i − logsumexp(log w): normalised log-weights; uniform −log N when all are ``-inf``."""
    log_weights = _as_log_weights(log_weights)
    total = logsumexp(log_weights, axis=-1, keepdims=True)
    uniform = jnp.full_like(log_weights, -jnp.log(log_weights.shape[-1]))
    finite_total = jnp.where(jnp.isfinite(total), total, 0.0)
    return jnp.where(jnp.isfinite(total), log_weights - finite_total, uniform)


def log_mean_exp(log_weights) -> jax.Array:
    """log((1/N) Σ_i exp(log w_i)); ``-inf`` (not NaN) when every weight is ``-inf``."""
    log_weights = _as_log_weights(log_weights)
    return logsumexp(log_weights, axis=-1) - jnp.log(log_weights.shape[-1]).astype(log_weights.dtype)


def ess(log_weights) -> jax.Array:
    """Effective sample size (Σ w)² / Σ w² = exp(2·logsumexp(log w) − logsumexp(2 log w)) in [1, N];
    0 when every weight is ``-inf`` (Kong, Liu & Wong 1994)."""
    log_weights = _as_log_weights(log_weights)
    value = jnp.exp(2.0 * logsumexp(log_weights, axis=-1) - logsumexp(2.0 * log_weights, axis=-1))
    return jnp.where(all_impossible(log_weights), jnp.zeros_like(value), value)


def _probabilities(log_weights) -> jax.Array:
    return jnp.exp(log_normalize(log_weights))


def _inverse_cdf(probabilities, uniforms) -> jax.Array:
    """Indices i with cdf[i-1] <= u < cdf[i]; a zero-probability particle is never returned.

    The cdf is divided by its last entry so it ends at exactly 1 (u < 1 then never runs past the
    end); a u rounded up to 1 is mapped to the last particle of positive probability.
    """
    n = probabilities.shape[-1]
    cdf = jnp.cumsum(probabilities)
    cdf = cdf / cdf[-1]
    indices = jnp.searchsorted(cdf, uniforms, side="right")
    last_positive = n - 1 - jnp.argmax(probabilities[::-1] > 0)
    return jnp.minimum(indices, last_positive).astype(jnp.int32)


def _num_samples(log_weights, num_samples) -> int:
    if num_samples is None:
        return int(jnp.shape(log_weights)[-1])
    return checks.positive_int("num_samples", num_samples)


def multinomial(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """``num_samples`` i.i.d. draws from softmax(log_weights) (sorted uniforms not needed)."""
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    return _inverse_cdf(probabilities, jax.random.uniform(key, (m,), probabilities.dtype))


def stratified(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Stratified resampling: u_j = (j + U_j) / M, U_j i.i.d. uniform."""
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    u = (jnp.arange(m, dtype=probabilities.dtype) + jax.random.uniform(key, (m,), probabilities.dtype)) / m
    return _inverse_cdf(probabilities, u)


def systematic(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Systematic resampling: u_j = (j + U) / M with one shared uniform U."""
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    u = (jnp.arange(m, dtype=probabilities.dtype) + jax.random.uniform(key, (), probabilities.dtype)) / m
    return _inverse_cdf(probabilities, u)


def residual(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Residual resampling: floor(M w_i) copies of i, then multinomial on the residual weights.

    The deterministic copies come first (in index order), the R random draws fill the tail.
    """
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    scaled = m * probabilities
    copies = jnp.floor(scaled)
    ends = jnp.cumsum(copies).astype(jnp.int32)
    positions = jnp.arange(m, dtype=jnp.int32)
    deterministic = jnp.minimum(jnp.searchsorted(ends, positions, side="right"), probabilities.shape[-1] - 1)
    leftover = scaled - copies
    has_leftover = jnp.sum(leftover) > 0
    leftover = jnp.where(has_leftover, leftover, probabilities)  # unused when no draw is needed
    random = _inverse_cdf(leftover, jax.random.uniform(key, (m,), probabilities.dtype))
    return jnp.where(positions < ends[-1], deterministic, random).astype(jnp.int32)


RESAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def resampler(name: str) -> Callable[..., jax.Array]:
    """The resampler called ``name`` (one of :data:`RESAMPLERS`), or a ``ValueError`` listing them."""
    return RESAMPLERS[checks.choice("resample", name, RESAMPLERS)]
