"""Resampling: pure ``(key, log_weights) -> indices`` maps, ESS and log-weight normalisation.

Every resampler draws ``num_samples`` ancestor indices with E[#copies of i] = num_samples · w_i,
where w = softmax(log_weights), by inverting the cumulative weights at uniforms (Douc, Cappé &
Moulines 2005, "Comparison of resampling schemes for particle filtering", arXiv cs/0507025; the
layout of ``blackjax.smc.resampling``). For the sorted uniforms of the stratified and systematic
schemes the number of uniforms below each cdf_i is known in closed form, so their indices come from
a scatter-add and a prefix sum in O(N + M), with no search; multinomial draws use ``searchsorted``.

* ``multinomial``: M independent uniforms u_j ~ U[0, 1).
* ``stratified``: one uniform per stratum, u_j = (j + U_j) / M.
* ``systematic``: one shared uniform, u_j = (j + U) / M (lowest variance in practice).
* ``residual``: floor(M w_i) deterministic copies, the remaining R = M − Σ floor(M w_i) drawn
  multinomially from the residual weights M w_i − floor(M w_i).

Log-weights may be ``-inf`` (impossible particles): such a particle is never chosen, also under
float rounding of the cumulative sum (see ``_cdf``). When *every* weight is ``-inf`` there is no
distribution to resample from; the resamplers then fall back to uniform weights (never NaN) and
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
    return ess_and_log_mean(log_weights)[0]


def ess_and_log_mean(log_weights) -> tuple[jax.Array, jax.Array]:
    """``(ess(log_weights), log_mean_exp(log_weights))`` sharing one logsumexp; every weight is −inf
    exactly when the log mean is −inf.

    Both come from s = log w − max log w (the ESS is invariant to the shift), so 2·s neither
    overflows nor loses the digits of a large max, even for log-weights near the largest float.
    """
    log_weights = _as_log_weights(log_weights)
    top = jnp.max(log_weights, axis=-1)
    top = jnp.where(jnp.isfinite(top), top, jnp.zeros_like(top))
    shifted = log_weights - top[..., None]
    total = logsumexp(shifted, axis=-1)                        # logsumexp(log w) − max log w
    impossible = total == -jnp.inf
    value = jnp.exp(2.0 * total - logsumexp(2.0 * shifted, axis=-1))
    log_mean = top + total - jnp.log(log_weights.shape[-1]).astype(log_weights.dtype)
    return jnp.where(impossible, jnp.zeros_like(value), value), log_mean


def _probabilities(log_weights) -> jax.Array:
    return jnp.exp(log_normalize(log_weights))


def _prefix(op, values) -> jax.Array:
    """Inclusive prefix reduction by a parallel scan (Blelloch 1990): O(N log N) work in log N steps,
    several times faster on CPU than the windowed reduction ``jnp.cumsum`` lowers to."""
    return jax.lax.associative_scan(op, values)


def _cdf(probabilities) -> jax.Array:
    """Cumulative weights, exactly equal across zero-weight particles and ending at exactly 1.

    A prefix sum computed by a tree (as XLA may) can round so that a zero-weight particle opens a gap
    of one ulp; taking the running max over the positive-weight entries only (leading zeros: −inf)
    rules that out, and dividing by the last entry makes it 1, so u < 1 never passes the end.
    """
    raw = jnp.where(probabilities > 0, _prefix(jnp.add, probabilities), -jnp.inf)
    cdf = _prefix(jnp.maximum, raw)
    return cdf / cdf[-1]


def _inverse_cdf(probabilities, uniforms) -> jax.Array:
    """Indices i with cdf[i-1] <= u < cdf[i] for u in [0, 1) (``searchsorted``, O(M log N))."""
    return jnp.searchsorted(_cdf(probabilities), uniforms, side="right").astype(jnp.int32)


def _fill_slots(cumulative_copies, num_samples: int) -> jax.Array:
    """Slot j -> particle #{i : C_i <= j}, for nondecreasing cumulative copy counts C_i in [0, M]:
    particle i fills slots C_{i-1} .. C_i - 1 (O(N + M): a scatter-add and a cumsum, no search)."""
    marks = jnp.zeros(num_samples + 1, jnp.int32).at[cumulative_copies].add(1)
    return _prefix(jnp.add, marks)[:num_samples]


def _num_samples(log_weights, num_samples) -> int:
    if num_samples is None:
        return int(jnp.shape(log_weights)[-1])
    return checks.positive_int("num_samples", num_samples)


def multinomial(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """``num_samples`` i.i.d. draws from softmax(log_weights), in the order drawn."""
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    return _inverse_cdf(probabilities, jax.random.uniform(key, (m,), probabilities.dtype))


def stratified(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Stratified resampling: u_j = (j + U_j) / M, U_j i.i.d. uniform; sorted indices.

    With a_i = M cdf_i and f_i = clip(floor(a_i), 0, M), the number of u_j below cdf_i is
    C_i = f_i + [U_{f_i} < a_i − f_i] (strata j < f_i lie wholly below), computed in closed form.
    """
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    uniforms = jax.random.uniform(key, (m,), probabilities.dtype)
    scaled = m * _cdf(probabilities)
    whole = jnp.clip(jnp.floor(scaled), 0, m).astype(jnp.int32)
    partial = (whole < m) & (uniforms[jnp.minimum(whole, m - 1)] < scaled - whole)
    return _fill_slots(whole + partial.astype(jnp.int32), m)


def systematic(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Systematic resampling: u_j = (j + U) / M with one shared uniform U; sorted indices.

    The number of u_j below cdf_i is C_i = clip(ceil(M cdf_i − U), 0, M), computed in closed form.
    """
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    shift = jax.random.uniform(key, (), probabilities.dtype)
    below = jnp.clip(jnp.ceil(m * _cdf(probabilities) - shift), 0, m).astype(jnp.int32)
    return _fill_slots(below, m)


def residual(key, log_weights, num_samples: int | None = None) -> jax.Array:
    """Residual resampling: floor(M w_i) copies of i, then multinomial on the residual weights.

    The deterministic copies come first (in index order), the R random draws fill the tail.
    """
    m = _num_samples(log_weights, num_samples)
    probabilities = _probabilities(log_weights)
    scaled = m * probabilities
    copies = jnp.floor(scaled)
    ends = jnp.minimum(_prefix(jnp.add, copies), m).astype(jnp.int32)
    deterministic = _fill_slots(ends, m)
    leftover = scaled - copies
    leftover = jnp.where(jnp.sum(leftover) > 0, leftover, probabilities)  # unused when no draw is needed
    random = _inverse_cdf(leftover, jax.random.uniform(key, (m,), probabilities.dtype))
    return jnp.where(jnp.arange(m) < ends[-1], deterministic, random).astype(jnp.int32)


RESAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def resampler(name: str) -> Callable[..., jax.Array]:
    """The resampler called ``name`` (one of :data:`RESAMPLERS`), or a ``ValueError`` listing them."""
    return RESAMPLERS[checks.choice("resample", name, RESAMPLERS)]
