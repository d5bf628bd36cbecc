"""Per-query cost and quality, and their summaries per difficulty tier.

Per query q run with width w_q, s_q sequential steps of up to e NFE each and r sequential rounds:
NFE_q = w_q · s_q · e · r (the planned cost of :func:`itscale.search.plan_width`), FLOPs_q = NFE_q ·
(FLOPs per NFE, from :func:`itscale.scaling.flops_per_evaluation`) and the latency proxy
depth_q = s_q · e · r model calls in sequence: depth adds latency, width runs in parallel and does not
(Snell et al. 2024, arXiv 2408.03314, discuss this trade-off between sequential revisions and
parallel samples). :func:`tier_summary` reduces any per-query value (NFE, depth, accuracy, reward)
per tier: count, mean and quantiles (linear interpolation) over the tier's finite values; a tier with
none reports count 0 and NaN statistics (so an empty tier is visible, never averaged in).
All functions are jit-able; ``num_tiers`` and the quantile levels are static.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks


class QueryCost(NamedTuple):
    """Per query: nfe (network evaluations), flops (nfe × FLOPs per NFE), depth (sequential calls)."""

    nfe: jax.Array
    flops: jax.Array
    depth: jax.Array


def query_cost(width, num_steps, *, nfe_per_step: int = 1, rounds: int = 1,
               flops_per_nfe: float = 0.0) -> QueryCost:
    """NFE_q = w_q s_q e r, FLOPs_q = NFE_q · flops_per_nfe, depth_q = s_q e r (see the module doc).
    ``width`` and ``num_steps`` broadcast (per-query arrays or ints)."""
    e = checks.positive_int("nfe_per_step", nfe_per_step)
    r = checks.positive_int("rounds", rounds)
    depth = jnp.asarray(num_steps) * (e * r)
    nfe = jnp.asarray(width) * depth
    flops = nfe * jnp.asarray(flops_per_nfe, jnp.result_type(float))
    return QueryCost(nfe, flops, jnp.broadcast_to(depth, nfe.shape))


class TierSummary(NamedTuple):
    """Per tier (num_tiers,): count of finite values, mean; quantiles (num_tiers, len(levels))."""

    count: jax.Array
    mean: jax.Array
    quantiles: jax.Array


def tier_summary(values, tiers, num_tiers: int, *,
                 levels: tuple[float, ...] = (0.1, 0.5, 0.9)) -> TierSummary:
    """Count, mean and quantiles at ``levels`` of the finite ``values`` (batch,) of each tier."""
    num_tiers = checks.positive_int("num_tiers", num_tiers)
    levels = tuple(checks.in_range("levels", float(v), 0.0, 1.0) for v in levels)
    values = jnp.asarray(values)
    values = values.astype(jnp.result_type(values, float))
    member = (jnp.asarray(tiers)[None, :] == jnp.arange(num_tiers)[:, None]) & jnp.isfinite(values)[None, :]
    count = jnp.sum(member, axis=1, dtype=jnp.int32)
    mean = jnp.sum(jnp.where(member, values, 0), axis=1) / jnp.where(count > 0, count, 1)
    masked = jnp.where(member, values, jnp.nan)
    quantiles = jnp.nanquantile(masked, jnp.asarray(levels, values.dtype), axis=1).T
    return TierSummary(count, jnp.where(count > 0, mean, jnp.nan),
                       jnp.where(count[:, None] > 0, quantiles, jnp.nan))
