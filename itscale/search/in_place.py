"""Resampling in place: copy only the particles that die, not the whole population.

Resampling gives particle i c_i offspring (Σ_i c_i = N). Any assignment of the offspring to the N
slots with those counts is the same resampled population, since particles are exchangeable. Keep every
particle with c_i ≥ 1 in its own slot, and write the c_i − 1 extra copies into the slots of the
particles with c_i = 0. Then only those m = #{i : c_i = 0} dead slots change: m row copies, written
in place. A gather of all N rows instead writes a new buffer, which XLA then copies back into the
carried state of the ``its.run`` loop: four passes over the state per resampling event. This is the
in-place ancestry of Murray, Lee & Jacob (2016, "Parallel resampling in the particle filter", JCGS
25(3), §3), which permutes the ancestors so that a_i = i whenever c_i > 0.

The k-th dead slot (in index order) receives the k-th extra copy: the extra copies are listed by
particle index. Both lists are computed in O(N) by prefix sums. Within any block of slots whose
ancestors all lie in the same block, as with per-query resampling, the dead slots and the extra
copies pair up inside the block, so blocks never mix.

Large leaves are copied in a loop of ``chunk`` rows per iteration, for ceil(m / chunk) iterations.
Small leaves, whose rows cost less to gather than a loop iteration, are gathered whole with the
permuted ancestors. Every leaf, large or small, ends in the same order, ``in_place_ancestors``, which
is idempotent: resampling one part of a state and then the rest with the ancestors read off the first
part (as ``token_smc`` does) keeps the parts aligned. On a particle axis sharded over devices, each
loop iteration moves its ``chunk`` rows with one collective, instead of an all-gather of the whole
state.

Random streams belong to slots, not particles: a leaf whose dtype is a typed PRNG key
(``jax.random.key``; ``its.run`` makes every key it passes down typed) stays where it is, neither moved
nor gathered. A copy written into a dead slot then continues with that slot's stream, so it draws
fresh randomness from its parent's from then on, whatever the base sampler keeps in its state (e.g.
the per-row keys of a token rollout's counter-based noise, ``itscale.tokens.noise``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks
from itscale.search.resampling import _fill_slots, _prefix

CHUNK = 16
# Leaves with at least this many bytes per particle are copied in place; smaller ones, whose rows cost
# less to gather than a loop iteration, are gathered (the threshold is measured: docs/performance.md).
IN_PLACE_MIN_ROW_BYTES = 4096


class InPlaceMoves(NamedTuple):
    """``destinations[k] <- sources[k]`` for k < ``num_moved``; entries past it are padding
    (destination N, source 0)."""
    destinations: jax.Array
    sources: jax.Array
    num_moved: jax.Array


def _check_ancestors(ancestors) -> jax.Array:
    ancestors = jnp.asarray(ancestors)
    if ancestors.ndim != 1 or not jnp.issubdtype(ancestors.dtype, jnp.integer):
        raise ValueError(f"ancestors must be a 1-D integer array of particle indices, got "
                         f"{ancestors.dtype}{list(ancestors.shape)}")
    return ancestors.astype(jnp.int32)


def in_place_moves(ancestors) -> InPlaceMoves:
    """The row copies that turn a population into its resampled one with ancestors ``ancestors``
    (any order) while every particle with an offspring keeps its slot."""
    ancestors = _check_ancestors(ancestors)
    n = ancestors.shape[0]
    counts = jnp.zeros(n, jnp.int32).at[ancestors].add(1)
    dead = (counts == 0).astype(jnp.int32)
    # Slot j of each list holds the index i whose running total first exceeds j.
    destinations = _fill_slots(_prefix(jnp.add, dead), n)
    sources = _fill_slots(_prefix(jnp.add, jnp.maximum(counts - 1, 0)), n)
    num_moved = jnp.sum(dead)
    return InPlaceMoves(destinations, jnp.where(jnp.arange(n) < num_moved, sources, 0), num_moved)


def _ancestors_of(moves: InPlaceMoves) -> jax.Array:
    n = moves.destinations.shape[0]
    return jnp.arange(n, dtype=jnp.int32).at[moves.destinations].set(moves.sources, mode="drop")


def in_place_ancestors(ancestors) -> jax.Array:
    """Ancestors with the same offspring counts as ``ancestors``, a_i = i wherever c_i > 0."""
    return _ancestors_of(in_place_moves(ancestors))


def in_place_order(ancestors) -> jax.Array:
    """A permutation σ of the slots with ``ancestors[σ] == in_place_ancestors(ancestors)``, for callers
    that keep other per-slot arrays beside the ancestors (scores, ranks) and must reorder them alike.

    Slots are grouped by ancestor (a stable sort); the first slot of each group goes to the ancestor's
    own slot and the others, in that order, to the dead slots.
    """
    ancestors = _check_ancestors(ancestors)
    n = ancestors.shape[0]
    order = jnp.argsort(ancestors, stable=True).astype(jnp.int32)
    grouped = ancestors[order]
    first = jnp.concatenate([jnp.ones(1, bool), grouped[1:] != grouped[:-1]])
    extra_rank = _prefix(jnp.add, (~first).astype(jnp.int32)) - 1
    target = jnp.where(first, grouped, in_place_moves(ancestors).destinations[jnp.maximum(extra_rank, 0)])
    return jnp.zeros(n, jnp.int32).at[target].set(order, unique_indices=True)


def _row_bytes(leaf) -> int:
    return leaf.dtype.itemsize * (leaf.size // leaf.shape[0])


def resample_in_place(tree, ancestors, *, chunk: int = CHUNK):
    """``tree`` resampled with the offspring counts of ``ancestors``: ``leaf[in_place_ancestors(ancestors)]``
    for every leaf, each leading with the particle axis, except typed PRNG key leaves, which stay in
    their slots (a copy continues with the stream of the slot it is written into)."""
    ancestors = _check_ancestors(ancestors)
    chunk = checks.positive_int("chunk", chunk)
    n = ancestors.shape[0]
    leaves, treedef = jax.tree.flatten(tree)
    for leaf in leaves:
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != n:
            raise ValueError(f"every leaf must lead with the particle axis of size {n}, got a leaf of shape "
                             f"{jnp.shape(leaf)}")
    kind = ["key" if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            else "large" if _row_bytes(leaf) >= IN_PLACE_MIN_ROW_BYTES else "small" for leaf in leaves]
    moves = in_place_moves(ancestors)
    permuted = _ancestors_of(moves) if "small" in kind else None
    size = min(chunk, n)
    pad = -n % size
    destinations = jnp.concatenate([moves.destinations, jnp.full((pad,), n, jnp.int32)])
    sources = jnp.concatenate([moves.sources, jnp.zeros((pad,), jnp.int32)])

    def copy_chunk(i, big):
        into = lax.dynamic_slice_in_dim(destinations, i * size, size)
        source = lax.dynamic_slice_in_dim(sources, i * size, size)
        # Destinations are distinct dead slots and never sources, so the copies commute.
        return [leaf.at[into].set(leaf.at[source].get(mode="promise_in_bounds"), mode="drop",
                                  unique_indices=True) for leaf in big]

    big = [leaf for leaf, k in zip(leaves, kind) if k == "large"]
    if big:
        big = lax.fori_loop(0, (moves.num_moved + size - 1) // size, copy_chunk, big)
    big = iter(big)
    out = [leaf if k == "key" else next(big) if k == "large"
           else leaf.at[permuted].get(mode="promise_in_bounds") for leaf, k in zip(leaves, kind)]
    return jax.tree.unflatten(treedef, out)
