"""One output type for every width strategy, continuous or token: :class:`SearchOutput`.

A search ends with ``width`` candidates per query and a score for each. :func:`search_output` takes
them, reads an invalid verdict (NaN or +inf) as −inf, picks the arg-max per query (ties to the lowest
index) and fills the fields every strategy reports; methods that weight their candidates (SMC, the
twisted sampler) add normalised ``log_weights`` and ``log_normalizer`` (log Ẑ), and a strategy's own
diagnostics go in ``info``.

Shapes: ``scores`` is (..., width) and each candidate leaf (..., width, ...) with the same leading
axes: (batch, width) for a batch of queries, (width,) for one query's particles (the contract form of
:func:`itscale.search.smc`). ``best`` drops the width axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.search.split import SearchSplit


class SearchOutput(NamedTuple):
    """best: the chosen candidate per query; best_score, best_index: its score and index; candidates:
    every kept candidate (leaves (..., width, ...)); scores (..., width), −inf for invalid or dead
    candidates; valid (...): some candidate scored above −inf; invalid_rewards: NaN / +inf verdicts met;
    split: how the budget was spent (:class:`SearchSplit`, int32 arrays); log_weights, log_normalizer:
    normalised log-weights of the candidates and log Ẑ where the method has them (else None); info:
    the strategy's own diagnostics (a dict, or None). ``particles`` is ``candidates``."""

    best: Any
    best_score: jax.Array
    best_index: jax.Array
    candidates: Any
    scores: jax.Array
    valid: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit | None
    log_weights: jax.Array | None = None
    log_normalizer: jax.Array | None = None
    info: dict | None = None

    @property
    def particles(self):
        """The candidates (SMC's name for them)."""
        return self.candidates


def is_invalid(scores: jax.Array) -> jax.Array:
    """Where a verdict is invalid: NaN or +inf."""
    return jnp.isnan(scores) | (scores == jnp.inf)


def invalid_as_impossible(scores: jax.Array) -> jax.Array:
    """A NaN or +inf verdict is invalid: read it as −inf (the candidate is never chosen)."""
    return jnp.where(is_invalid(scores), -jnp.inf, scores)


def verdicts(scores: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
    """``(scores, invalid)``: a reward's ``scores`` checked to be of shape (rows,), invalid verdicts read
    as −inf, and their number (int32)."""
    if jnp.shape(scores) != (rows,):
        raise ValueError(f"reward_fn must return scores of shape (rows,) = ({rows},), got shape "
                         f"{jnp.shape(scores)}")
    scores = jnp.asarray(scores)
    return invalid_as_impossible(scores), jnp.sum(is_invalid(scores), dtype=jnp.int32)


def take_index(tree, index: jax.Array, axis: int):
    """``leaf[..., index[...], ...]``: the entry ``index`` along ``axis`` of every leaf, axis dropped;
    ``index`` has the leaves' shape before ``axis``."""
    def take(a):
        idx = index.reshape(index.shape + (1,) * (a.ndim - axis))
        return jnp.take_along_axis(a, idx, axis=axis).squeeze(axis)
    return jax.tree.map(take, tree)


def search_output(candidates, scores: jax.Array, *, split: SearchSplit | None, invalid_rewards=None,
                  log_weights=None, log_normalizer=None, info: dict | None = None) -> SearchOutput:
    """The :class:`SearchOutput` of ``candidates`` scored ``scores`` (see the module docstring)."""
    scores = invalid_as_impossible(jnp.asarray(scores))
    axis = scores.ndim - 1
    index = jnp.argmax(scores, axis=axis).astype(jnp.int32)
    if invalid_rewards is None:
        invalid_rewards = jnp.zeros((), jnp.int32)
    return SearchOutput(best=take_index(candidates, index, axis),
                        best_score=take_index(scores, index, axis), best_index=index, candidates=candidates,
                        scores=scores, valid=jnp.any(scores > -jnp.inf, axis=axis),
                        invalid_rewards=jnp.asarray(invalid_rewards, jnp.int32),
                        split=None if split is None else split.as_arrays(),
                        log_weights=log_weights, log_normalizer=log_normalizer, info=info)
