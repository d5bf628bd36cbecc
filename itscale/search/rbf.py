"""``rbf(sampler, reward_fn, *, nfe_budget)``: rollover budget forcing over a stochastic refinement sampler.

Rollover budget forcing (Kim et al. 2025, "Inference-time scaling for flow models via stochastic
generation and rollover budget forcing", arXiv 2503.19385, Sec. 5 and the authors' reference code):
one particle per query; the NFE budget B left after scoring the initial noise is split evenly over the
T denoising steps, Q = ⌊(B − c₀) / T⌋ per step. At step i candidates are drawn one at a time from the
base sampler's stochastic transition and scored on their x̂₀ (:mod:`itscale.search.children`); the
first candidate whose reward beats the best reward so far is taken at once and the unused NFE of the
step roll over to the next; if the step's quota runs out first, the best candidate of the step is
taken. The last step draws until all the remaining budget is spent and keeps its best final sample.

Readings chosen where the paper leaves room (each documented here, each tested):

* The quota of step i is everything left minus Q for each later step, so a step spends its own Q plus
  all that earlier steps left over, and the last step spends every NFE that remains.
* "Best reward so far" is the threshold: initially r(x̂₀(x_T)) of the query's own noise (cost c₀ =
  ``nfe_per_step``, one preview), raised to the reward of each accepted candidate, and unchanged when a
  step ends without acceptance (the reference code keeps it then, so the next step must beat it).
* A candidate costs its draw plus its x̂₀ preview, 2 · ``nfe_per_step``, at the last step only its draw
  (see :mod:`itscale.search.children`); Q must buy one candidate per step, so the smallest budget is
  ``nfe_per_step · (1 + 2T)`` (``nfe_per_step · 2`` for T = 1); below it ``ValueError`` names
  ``nfe_budget``.
* Candidate 0 of every step uses the step's own key: with a reward that no candidate can beat (a
  constant) each step takes its first candidate, and a query run alone is the base sampler bit for
  bit. Query b of a batch uses ``split(key, batch)[b]`` (one key per query, as ``its.particles``).
* The paper's search over initial noises before the first step is not part of this sampler (compose
  it with a noise search); only the query's own noise is scored.

The loop of a step is a ``counting.while_loop`` per query (``counting.vmap`` over the batch), so it is
jit-able under ``jax.vmap`` and counts only the candidates evaluated; ``stats.nfe`` is at most
``batch × nfe_budget``. The output is a :class:`itscale.search.SearchOutput` with one candidate per
query (the final sample, ``best`` / ``best_score``), the split (width 1, the budget) and ``info``:
``step_quota`` Q, per query ``candidates`` drawn, ``accepted_steps`` (steps ended by a candidate that
beat the threshold), ``nfe_spent`` (by the plan's costs, the measured ``stats.nfe`` minus the initial
previews), and the best scored estimate met anywhere in the search, ``best_seen`` (an x̂₀ or the final
sample) with ``best_seen_score``. A NaN or +inf reward is read as −inf and counted; all −inf gives the
base step's first candidates, ``valid`` False and no NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.keys import split_per_particle
from itscale.core.sampler import Sampler, init_state, start_context, validate, watched
from itscale.core.weights import takes_models
from itscale.search.children import check_sampler, score_children, scorer, x0_hat
from itscale.search.output import search_output
from itscale.search.split import SearchSplit, declared_nfe_per_step


class RBFParams(NamedTuple):
    """Traced hyper-parameters: the base sampler's ``params``."""

    base: Any


class RBFState(NamedTuple):
    """Per query (leading axis batch): base, the particle's state; threshold, the best reward accepted
    so far; score, the reward of the particle's last scoring; remaining, NFE left of the budget;
    candidates, accepted_steps, nfe_spent as in the module docstring; best_seen, best_seen_score, the
    best scored estimate met. invalid_rewards: NaN / +inf verdicts met; split, quota: the plan."""

    base: Any
    threshold: jax.Array
    score: jax.Array
    remaining: jax.Array
    candidates: jax.Array
    accepted_steps: jax.Array
    nfe_spent: jax.Array
    best_seen: Any
    best_seen_score: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit
    quota: jax.Array


def plan_rbf(nfe_budget: int, *, num_steps: int, nfe_per_step: int) -> tuple[SearchSplit, int]:
    """The split and the per-step quota Q; ``ValueError`` naming ``nfe_budget`` and the minimum."""
    largest = 2 * nfe_per_step if num_steps > 1 else nfe_per_step
    need = nfe_per_step + num_steps * largest
    if nfe_budget < need:
        raise ValueError(f"nfe_budget={nfe_budget} is too small for rollover budget forcing: scoring the "
                         f"initial noise costs {nfe_per_step} NFE and each of num_steps={num_steps} steps "
                         f"needs one candidate of up to {largest} NFE; give nfe_budget >= {need}")
    quota = (nfe_budget - nfe_per_step) // num_steps
    return SearchSplit(nfe_budget, nfe_budget, 0, 1, 1, 1, num_steps, nfe_per_step, 1), quota


def _where(pred, a, b):
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def _candidate_key(key, j):
    """The step's own key for candidate 0, ``fold_in(key, j)`` for the others."""
    data = jnp.where(j == 0, jax.random.key_data(key), jax.random.key_data(jax.random.fold_in(key, j)))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


@takes_models
def rbf(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, nfe_per_step: int | None = None) -> Sampler:
    """Rollover budget forcing over ``sampler`` with ``nfe_budget`` NFE per query; see the module doc.

    Args:
      sampler: a stochastic refinement :class:`itscale.Sampler` whose step reports ``info["x0_hat"]``
        (state leaves lead with the batch of queries).
      reward_fn: batch -> scores of shape (batch,), higher is better; −inf marks impossible outputs.
      nfe_budget: static total NFE per query.
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
    """
    check_sampler(sampler, reward_fn)
    budget = checks.positive_int("nfe_budget", nfe_budget)
    per_step = declared_nfe_per_step(sampler, nfe_per_step)
    score = scorer(reward_fn)

    def init(key, x, params, ctx=None):
        if ctx is None:
            raise ValueError("rbf splits its budget over the run's num_steps: run it with "
                             "its.run(..., num_steps=...)")
        split, quota = plan_rbf(budget, num_steps=ctx.num_steps, nfe_per_step=per_step)
        base = init_state(sampler, key, x, params.base, ctx)
        look = x0_hat(sampler, key, base, start_context(ctx.num_steps), params.base)
        threshold, invalid = score(look)
        batch = threshold.shape[0]
        zeros = jnp.zeros((batch,), jnp.int32)
        return RBFState(base, threshold, threshold, jnp.full((batch,), budget - per_step, jnp.int32), zeros,
                        zeros, zeros, look, threshold, invalid, split.as_arrays(), jnp.asarray(quota, jnp.int32))

    def search(key, row, threshold, quota, seen, seen_score, ctx, params):
        """One query's step: candidates until one beats ``threshold`` or ``quota`` is spent."""
        parent = jax.tree.map(lambda a: a[None], row)
        is_last = ctx.step == ctx.num_steps - 1
        cost = jnp.where(is_last, per_step, 2 * per_step).astype(jnp.int32)

        def draw(j):
            child_key = _candidate_key(key, j)
            child, _ = sampler.step(child_key, parent, ctx, params)
            scores, invalid, look = score_children(sampler, score, child_key, child, ctx, params)
            return child, scores[0], invalid, look

        def more(carry):
            _, used, accepted = carry[:3]
            return (used + cost <= quota) & ~accepted

        def body(carry):
            j, used, accepted, best, best_score, seen, seen_score, invalid = carry
            child, s, bad, look = draw(j)
            take = (j == 0) | (s > best_score)
            improves = s > seen_score
            return (j + 1, used + cost, ~is_last & (s > threshold), _where(take, child, best),
                    jnp.where(take, s, best_score), _where(improves, look, seen),
                    jnp.where(improves, s, seen_score), invalid + bad)

        zero = jnp.zeros((), jnp.int32)
        start = (zero, zero, jnp.zeros((), bool), parent, jnp.full((), -jnp.inf, threshold.dtype),
                 jax.tree.map(lambda a: a[None], seen), seen_score, zero)
        j, used, accepted, best, best_score, seen, seen_score, invalid = counting.while_loop(more, body, start)
        squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
        return (squeeze(best), jnp.where(accepted, best_score, threshold), best_score, used, j, accepted,
                squeeze(seen), seen_score, invalid)

    def step(key, state, ctx, params):
        batch = state.threshold.shape[0]
        reserve = state.quota * (ctx.num_steps - 1 - ctx.step)
        per_query = counting.vmap(lambda k, row, thr, q, seen, seen_score: search(
            k, row, thr, q, seen, seen_score, ctx, params.base), rows="batched")
        base, threshold, scores, used, drawn, accepted, seen, seen_score, invalid = per_query(
            split_per_particle(key, batch), state.base, state.threshold, state.remaining - reserve,
            state.best_seen, state.best_seen_score)
        new_state = state._replace(
            base=base, threshold=threshold, score=scores, remaining=state.remaining - used,
            candidates=state.candidates + drawn, accepted_steps=state.accepted_steps + accepted,
            nfe_spent=state.nfe_spent + used, best_seen=seen, best_seen_score=seen_score,
            invalid_rewards=state.invalid_rewards + jnp.sum(invalid, dtype=jnp.int32))
        return new_state, {"candidates": drawn, "accepted": accepted, "nfe": used}

    def finalize(state):
        outputs = sampler.finalize(state.base)
        info = {"step_quota": state.quota, "candidates": state.candidates,
                "accepted_steps": state.accepted_steps, "nfe_spent": state.nfe_spent,
                "best_seen": state.best_seen, "best_seen_score": state.best_seen_score}
        return search_output(jax.tree.map(lambda a: a[:, None], outputs), state.score[:, None],
                             split=state.split, invalid_rewards=state.invalid_rewards, info=info)

    def check(x, params):
        validate(sampler, x, params.base)

    return Sampler(init, step, finalize, RBFParams(sampler.params),
                   lambda state: watched(sampler, state.base), sampler.prior, check,
                   nfe_per_step=sampler.nfe_per_step)
