"""``best_of_n(sampler, reward_fn, num_candidates=n)``: n candidates per query, keep the best.

Best-of-N (Cobbe et al. 2021, arXiv 2110.14168; Brown et al. 2024, arXiv 2407.21787): each of the
``batch`` queries in ``x`` is repeated ``n`` times along the leading axis (candidates of query b are
rows b·n … b·n + n − 1). For a refinement sampler (one with a ``prior``, see :class:`itscale.Sampler`)
candidate 0 of a query starts from the query's own noise ``x[b]`` and candidates 1 … n − 1 from fresh
independent draws of the sampler's prior, so a deterministic sampler (an ODE) gives n different
samples; ``num_candidates=1`` is the base sampler itself. The base sampler runs once on the enlarged
batch of batch·n rows, and
``finalize`` scores every candidate with ``reward_fn`` (counted as a verifier: batch·n calls) and
returns the arg-max per query. Works for any sampler whose state leaves lead with the batch axis and
whose draws are independent across rows (refine samplers, token rollouts). NFE: n times the base
sampler's (``stats.nfe``); use :func:`itscale.search.split_budget` to pick n from an NFE budget.

Ties go to the lowest candidate index. A NaN or +inf score is an invalid verdict, read as −inf; a
query whose candidates all score −inf returns candidate 0 with ``best_score`` −inf and ``valid`` False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state
from itscale.core.weights import takes_models

_NOISE_STREAM = 0x2015E  # fold-in constant: the candidates' fresh noise, distinct from the base init's key


class BestOfNOutput(NamedTuple):
    """best: the chosen output per query (leading axis batch); best_score, best_index (batch,);
    scores (batch, n); candidates: every output, leaves shaped (batch, n, ...); valid (batch,): some
    candidate scored above −inf; num_candidates: n (the width the budget was split into)."""

    best: Any
    best_score: jax.Array
    best_index: jax.Array
    scores: jax.Array
    candidates: Any
    valid: jax.Array
    num_candidates: jax.Array


@takes_models
def best_of_n(sampler: Sampler, reward_fn: Callable, *, num_candidates: int) -> Sampler:
    """Draw ``num_candidates`` outputs per query with ``sampler`` and keep the highest ``reward_fn``."""
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be an itscale.Sampler, got {type(sampler).__name__}")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (batch -> scores of shape (batch,)), got "
                        f"{type(reward_fn).__name__}")
    n = checks.positive_int("num_candidates", num_candidates)
    reward = counting.counted(reward_fn, kind="verifier")

    def init(key, x, params, ctx=None):
        for leaf in jax.tree.leaves(x):
            if jnp.ndim(leaf) == 0:
                raise ValueError("x must lead with the batch (query) axis; got a scalar leaf")
        repeated = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), x)
        if sampler.prior is not None and n > 1:
            fresh = sampler.prior(jax.random.fold_in(key, _NOISE_STREAM), repeated)
            first = jnp.arange(jax.tree.leaves(repeated)[0].shape[0]) % n == 0
            repeated = jax.tree.map(lambda own, new: jnp.where(first.reshape((-1,) + (1,) * (own.ndim - 1)),
                                                               own, new), repeated, fresh)
        return init_state(sampler, key, repeated, params, ctx)

    def finalize(state):
        outputs = sampler.finalize(state)
        rows = jnp.shape(jax.tree.leaves(outputs)[0])[0]
        scores = reward(outputs)
        if jnp.shape(scores) != (rows,):
            raise ValueError(f"reward_fn must return scores of shape (batch * num_candidates,) = ({rows},), "
                             f"got shape {jnp.shape(scores)}")
        scores = jnp.where(jnp.isnan(scores) | (scores == jnp.inf), -jnp.inf, scores).reshape(rows // n, n)
        candidates = jax.tree.map(lambda a: a.reshape((rows // n, n) + a.shape[1:]), outputs)
        index = jnp.argmax(scores, axis=1)
        best = jax.tree.map(lambda a: jnp.take_along_axis(
            a, index.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0], candidates)
        return BestOfNOutput(best=best, best_score=jnp.take_along_axis(scores, index[:, None], axis=1)[:, 0],
                             best_index=index, scores=scores, candidates=candidates,
                             valid=jnp.any(scores > -jnp.inf, axis=1),
                             num_candidates=jnp.asarray(n, jnp.int32))

    return Sampler(init, sampler.step, finalize, sampler.params, sampler.watch, sampler.prior, sampler.validate)
