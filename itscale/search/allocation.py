"""Deterministic offspring allocation for tree search: counts proportional to weights, and slots.

Tree searches that give each node a number of children (beam search keeps M children of each of the
top-N nodes; REBASE gives node i ``round(B · softmax(r / T)_i)`` children, Wu et al. 2024,
arXiv 2408.00724, §3.2) lay the children out in a fixed number of slots, so shapes stay static:

* :func:`apportion`: integer counts c_i with Σ c_i = B exactly and |c_i − B w_i| < 1 for
  w = softmax(log_weights), by the largest-remainder (Hamilton) method: ⌊B w_i⌋ each, then one more
  to the B − Σ⌊B w_i⌋ largest fractional parts (ties: lowest index). Deterministic, unlike the
  resamplers of :mod:`itscale.search.resampling`; ``total`` may be traced. ``-inf`` weights get 0;
  all ``-inf`` gives all zeros (nothing to allocate to, never NaN).
* :func:`offspring_slots`: slot j of K holds a copy of parent i when C_{i−1} <= j < C_i, C the
  cumulative counts (parents in index order, each one's copies contiguous), with the copy's rank
  j − C_{i−1} among its siblings; slots past Σ c_i are unused (they keep parent j, masked out).

Both act on the last axis and broadcast over the leading ones (e.g. independent subtrees).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.search.resampling import all_impossible, log_normalize


def apportion(log_weights, total) -> jax.Array:
    """int32 counts on the last axis summing to ``total`` (0 if all weights are −inf); see module doc."""
    log_weights = jnp.asarray(log_weights)
    impossible = all_impossible(log_weights)[..., None]
    probabilities = jnp.where(impossible, 0.0, jnp.exp(log_normalize(log_weights)))
    total = jnp.asarray(total, jnp.int32)
    quota = probabilities * total[..., None].astype(probabilities.dtype)
    whole = jnp.floor(quota)
    counts = whole.astype(jnp.int32)
    remainder = jnp.maximum(total - jnp.sum(counts, axis=-1), 0)
    # rank of each fractional part, largest first (stable: ties to the lowest index)
    fraction = jnp.where(probabilities > 0, quota - whole, -1.0)
    order = jnp.argsort(-fraction, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    extra = (rank < remainder[..., None]) & (probabilities > 0)
    return jnp.where(impossible, 0, counts + extra.astype(jnp.int32))


class Slots(NamedTuple):
    """For each of K slots: ``parent`` index, ``rank`` among that parent's copies, ``used`` flag."""

    parent: jax.Array
    rank: jax.Array
    used: jax.Array


def offspring_slots(counts) -> Slots:
    """Lay out ``counts`` (..., K) nonnegative ints with Σ <= K into K slots; see the module doc."""
    counts = jnp.asarray(counts, jnp.int32)
    size = counts.shape[-1]
    ends = jnp.cumsum(counts, axis=-1)
    slot = jnp.arange(size, dtype=jnp.int32)
    below = jax.vmap(lambda e: jnp.searchsorted(e, slot, side="right"))                  # #{i : C_i <= j}
    parent = below(ends.reshape(-1, size)).reshape(counts.shape).astype(jnp.int32)
    used = slot < ends[..., -1:]
    parent = jnp.where(used, jnp.minimum(parent, size - 1), slot)
    first = jnp.take_along_axis(ends - counts, parent, axis=-1)
    return Slots(parent, jnp.where(used, slot - first, 0), used)
