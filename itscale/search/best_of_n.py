"""``best_of_n(sampler, reward_fn, num_candidates=n | nfe_budget=B)``: n candidates per query, keep the best.

Best-of-N (Cobbe et al. 2021, arXiv 2110.14168; Brown et al. 2024, arXiv 2407.21787): each of the
``batch`` queries in ``x`` is repeated ``n`` times along the leading axis (candidates of query b are
rows b·n … b·n + n − 1). For a refinement sampler (one with a ``prior``, see :class:`itscale.Sampler`)
candidate 0 of a query starts from the query's own noise ``x[b]`` and candidates 1 … n − 1 from fresh
independent draws of the sampler's prior, so a deterministic sampler (an ODE) gives n different
samples; ``num_candidates=1`` is the base sampler itself. The base sampler runs once on the enlarged
batch of batch·n rows, and ``finalize`` scores every candidate with ``reward_fn`` (counted as a
verifier: batch·n calls) and returns the arg-max per query as a :class:`itscale.search.SearchOutput`.
Works for any sampler whose state leaves lead with the batch axis and whose draws are independent
across rows (refine samplers, token rollouts).

Budget: ``num_candidates=n``, or ``nfe_budget=B`` with the run's ``num_steps``: n is the largest with
n × (row_init + num_steps × nfe_per_step) <= B (:func:`itscale.search.plan_width`; ``nfe_per_step``
from the sampler's declaration, ``row_init`` what the base sampler's ``init`` spends per row, read
from its counted calls: a rollout's prompt prefill, paid by every candidate). The split is reported in
``output.split`` (for ``num_candidates`` its budget is the bound); ``stats.nfe`` is the measured total.

Ties go to the lowest candidate index. A NaN or +inf score is an invalid verdict, read as −inf and
counted in ``invalid_rewards``; a query whose candidates all score −inf returns candidate 0 with
``best_score`` −inf and ``valid`` False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, watch_within
from itscale.core.weights import takes_models
from itscale.search.output import search_output, verdicts
from itscale.search.split import SearchSplit, declared_nfe_per_step, fixed_split, init_nfe_per_row, plan_width

_NOISE_STREAM = 0x2015E  # fold-in constant: the candidates' fresh noise, distinct from the base init's key


class BestOfNState(NamedTuple):
    """base: the base sampler's state on batch·n rows; split: the budget's split (int32 arrays);
    slots: an empty (n, 0) array whose shape carries the static width n to ``finalize``."""

    base: Any
    split: SearchSplit
    slots: jax.Array


def repeat_queries(sampler: Sampler, key, x, n: int):
    """Each query of ``x`` repeated ``n`` times along the leading axis; for a sampler with a ``prior``,
    copies 1 … n − 1 of a query are fresh draws of initial noise (copy 0 keeps the query's own)."""
    for leaf in jax.tree.leaves(x):
        if jnp.ndim(leaf) == 0:
            raise ValueError("x must lead with the batch (query) axis; got a scalar leaf")
    repeated = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), x)
    if n == 1:
        return repeated
    return fresh_copies(sampler, key, repeated, jnp.arange(jax.tree.leaves(repeated)[0].shape[0]) % n == 0)


def fresh_copies(sampler: Sampler, key, rows, first):
    """``rows`` with every row where ``first`` is False replaced by a fresh draw of the sampler's prior
    (unchanged for a sampler without one): the candidates of a query beyond its own noise."""
    if sampler.prior is None:
        return rows
    fresh = sampler.prior(jax.random.fold_in(key, _NOISE_STREAM), rows)
    return jax.tree.map(lambda own, new: jnp.where(first.reshape((-1,) + (1,) * (own.ndim - 1)), own, new),
                        rows, fresh)


@takes_models
def best_of_n(sampler: Sampler, reward_fn: Callable, *, num_candidates: int | None = None,
              nfe_budget: int | None = None, nfe_per_step: int | None = None) -> Sampler:
    """Draw n outputs per query with ``sampler`` and keep the highest ``reward_fn``; see the module doc.

    Args:
      sampler: base :class:`itscale.Sampler` (state leaves lead with the batch axis).
      reward_fn: batch -> scores of shape (batch,), higher is better; −inf marks impossible outputs.
      num_candidates: static n; or nfe_budget: static NFE per query, n planned from it and the run's
        ``num_steps`` (give exactly one of the two).
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (batch,)")
    if (num_candidates is None) == (nfe_budget is None):
        raise ValueError("give exactly one of num_candidates (the width) and nfe_budget (NFE per query)")
    fixed = None if num_candidates is None else checks.positive_int("num_candidates", num_candidates)
    if nfe_budget is not None:
        checks.positive_int("nfe_budget", nfe_budget)
        per_step = declared_nfe_per_step(sampler, nfe_per_step)
    reward = counting.counted(reward_fn, kind="verifier")

    def plan(num_steps: int, row_init: int) -> SearchSplit:
        if fixed is not None:
            return fixed_split(fixed, num_steps=num_steps, nfe_per_step=sampler.nfe_per_step or 1,
                               row_init=row_init)
        return plan_width(nfe_budget, num_steps=num_steps, nfe_per_step=per_step, row_init=row_init)

    def init(key, x, params, ctx=None):
        if ctx is None and fixed is None:
            raise ValueError("best_of_n(nfe_budget=...) plans its width from the run's num_steps: run it "
                             "with its.run(..., num_steps=...)")
        split = plan(1 if ctx is None else ctx.num_steps, init_nfe_per_row(sampler, key, x, params, ctx))
        base = init_state(sampler, key, repeat_queries(sampler, key, x, split.width), params, ctx)
        return BestOfNState(base, split.as_arrays(), jnp.zeros((split.width, 0), jnp.int8))

    def step(key, state, ctx, params):
        base, info = sampler.step(key, state.base, ctx, params)
        return state._replace(base=base), info

    def finalize(state):
        outputs = sampler.finalize(state.base)
        rows, n = jnp.shape(jax.tree.leaves(outputs)[0])[0], state.slots.shape[0]
        scores, invalid = verdicts(reward(outputs), rows)
        candidates = jax.tree.map(lambda a: a.reshape((rows // n, n) + a.shape[1:]), outputs)
        return search_output(candidates, scores.reshape(rows // n, n), split=state.split,
                             invalid_rewards=invalid)

    return Sampler(init, step, finalize, sampler.params, watch_within(sampler.watch, "base"), sampler.prior,
                   sampler.validate, nfe_per_step=sampler.nfe_per_step)
