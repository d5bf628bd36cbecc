"""Per-query difficulty from a query's first samples, and difficulty tiers by quantiles.

Snell et al. 2024 (arXiv 2408.03314, Sec. 3.2) bin queries into difficulty levels by quantiles of a
difficulty measure and choose the compute per level; without ground truth they use the verifier's
predicted difficulty from a few samples. Two such measures, batched over queries (leading axes) and
computed from the first ``k`` samples of each (last axis):

- answer agreement a_q = (1/k) · #{i < k : answer_i = majority answer} (self-consistency,
  :func:`itscale.search.voting.majority_vote`; a sample without an answer never agrees), and its
  difficulty 1 − a_q;
- verifier-score mean and (population) variance over the finite scores among the first k (a NaN or ±inf
  score is an invalid verdict and is left out; ``num_finite`` counts the rest); the difficulty is
  −mean (−inf mean, i.e. hardest, when no score is finite).

:func:`quantile_tiers` maps difficulties to ``num_tiers`` tiers, 0 easiest: the edges are the
quantiles e_j = Q(j / D), j = 1 … D − 1 (linear interpolation), and tier = #{j : d > e_j}; a NaN
or +inf difficulty is read as the largest (hardest), −inf as the smallest (a quarter of the dtype's
largest float, so interpolated edges stay finite). Equal difficulties always share a tier, so
coarse measures (agreement of k samples takes k values) give unequal tiers, some of them possibly
empty: with fixed calibration edges a new query can land in a tier no calibration query holds (harder
than every calibration query, when the top edge is the calibration's largest value), where nothing was
measured; :func:`nearest_calibrated_tier` moves it to the closest tier that was. All functions are
jit-able; ``k`` and ``num_tiers`` are static.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.search.voting import majority_vote


def _first(values, k: int | None, name: str) -> jax.Array:
    values = jnp.asarray(values)
    if values.ndim < 1:
        raise ValueError(f"{name} must have a sample axis (last axis), got a scalar")
    if k is None:
        return values
    k = checks.positive_int("k", k)
    if k > values.shape[-1]:
        raise ValueError(f"k={k} exceeds the {values.shape[-1]} samples on the last axis of {name}")
    return values[..., :k]


def answer_agreement(answers, *, k: int | None = None) -> jax.Array:
    """a_q: the fraction of the first ``k`` (default all) answers equal to their majority answer."""
    answers = _first(answers, k, "answers")
    vote = majority_vote(answers)
    return vote.tally / answers.shape[-1]


def agreement_difficulty(answers, *, k: int | None = None) -> jax.Array:
    """1 − a_q = (k − tally) / k: 0 when every sample agrees, near 1 when no two do."""
    answers = _first(answers, k, "answers")
    return (answers.shape[-1] - majority_vote(answers).tally) / answers.shape[-1]


class ScoreStats(NamedTuple):
    """mean, variance: over the finite scores among the first k (−inf and 0 with none); num_finite."""

    mean: jax.Array
    variance: jax.Array
    num_finite: jax.Array


def score_stats(scores, *, k: int | None = None) -> ScoreStats:
    """Mean and population variance of each query's finite verifier scores among its first ``k``."""
    scores = _first(scores, k, "scores")
    finite = jnp.isfinite(scores)
    count = jnp.sum(finite, axis=-1)
    safe = jnp.maximum(count, 1)
    kept = jnp.where(finite, scores, 0)
    mean = jnp.sum(kept, axis=-1) / safe
    variance = jnp.sum(jnp.where(finite, (scores - mean[..., None]) ** 2, 0), axis=-1) / safe
    return ScoreStats(jnp.where(count > 0, mean, -jnp.inf), variance, count.astype(jnp.int32))


def score_difficulty(scores, *, k: int | None = None) -> jax.Array:
    """−mean of the finite first-``k`` scores (Snell et al.'s verifier-predicted difficulty)."""
    return -score_stats(scores, k=k).mean


def _ordered(difficulty) -> jax.Array:
    """Difficulties as finite floats of the same order: NaN and +inf -> big, −inf -> −big."""
    d = jnp.asarray(difficulty)
    d = d.astype(jnp.result_type(d, float))
    big = jnp.finfo(d.dtype).max / 4
    return jnp.clip(jnp.where(jnp.isnan(d), big, d), -big, big)


def quantile_edges(difficulty, num_tiers: int) -> jax.Array:
    """The D − 1 edges Q(j / D), j = 1 … D − 1, of the difficulties (NaN, ±inf: see the module doc)."""
    num_tiers = checks.positive_int("num_tiers", num_tiers)
    d = jnp.ravel(_ordered(difficulty))
    levels = jnp.arange(1, num_tiers, dtype=jnp.result_type(d, float)) / num_tiers
    return jnp.quantile(d, levels)


def tiers_from_edges(difficulty, edges) -> jax.Array:
    """tier = #{j : d > e_j} (int32; 0 easiest), NaN difficulty in the hardest tier."""
    return jnp.sum(_ordered(difficulty)[..., None] > _ordered(edges), axis=-1, dtype=jnp.int32)


def quantile_tiers(difficulty, num_tiers: int) -> jax.Array:
    """Tiers 0 … D − 1 of a batch of difficulties by their own quantiles (equal-sized for distinct values
    when D divides the batch). For a fixed calibration, compute :func:`quantile_edges` on a reference
    set and call :func:`tiers_from_edges`."""
    return tiers_from_edges(difficulty, quantile_edges(difficulty, num_tiers))


def nearest_calibrated_tier(tiers, calibration_tiers, num_tiers: int) -> jax.Array:
    """Each tier replaced by the nearest tier holding a calibration query, the harder one at equal distance
    (int32, the shape of ``tiers``): queries of a tier without calibration data are planned with the
    measured curves closest to them. ``calibration_tiers`` must hold at least one query."""
    num_tiers = checks.positive_int("num_tiers", num_tiers)
    calibration_tiers = jnp.ravel(jnp.asarray(calibration_tiers))
    if calibration_tiers.size == 0:
        raise ValueError("calibration_tiers is empty: no tier was calibrated")
    present = jnp.zeros(num_tiers, bool).at[calibration_tiers].set(True)
    tiers = jnp.asarray(tiers)[..., None]
    candidate = jnp.arange(num_tiers)
    rank = 2 * jnp.abs(tiers - candidate) - (candidate > tiers)               # ties go to the harder tier
    return jnp.argmin(jnp.where(present, rank, 2 * num_tiers + 1), axis=-1).astype(jnp.int32)
