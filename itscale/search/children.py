"""Per-step children over a stochastic refinement sampler: draw, score on x̂₀, select.

The core shared by SVDD (:mod:`itscale.search.svdd`), CoDe (:mod:`itscale.search.code`) and rollover
budget forcing (:mod:`itscale.search.rbf`). A *child* of a particle at step i is a draw of the base
sampler's own stochastic transition, ``sampler.step(key, state, ctx_i)`` (an SDE ``its.refine.sde``,
DDPM / DDIM with η > 0 ``its.refine.ddpm``, a flow converted to an SDE); different keys (or different
rows of one call) give independent children. A child is scored by r(x̂₀(child)):

* **preview** (every step but the last): x̂₀ of the child is the ``info["x0_hat"]`` of the *next*
  step run on it, ``sampler.step(preview_key, child, ctx_{i+1})``, whose move is discarded. This is
  the base sampler's own denoiser at the child (Tweedie's formula for an SDE / DDPM; the velocity
  converted to x₀ for a flow) and costs one step of the sampler, ``nfe_per_step`` NFE per child, all
  counted. The reference implementation of Kim et al. (2025) pays one NFE per candidate because it
  caches the parent's velocity; a :class:`itscale.Sampler` couples the model call at the parent with
  the draw, so here a candidate costs its draw (``nfe_per_step``) plus its preview (``nfe_per_step``).
* **last step**: the child is a final sample; its score is r(``sampler.finalize(child)``), no NFE.

One scoring is one ``counting.cond`` on ``ctx.step == num_steps - 1``: only the branch taken counts.
A NaN or +inf reward is an invalid verdict, read as −inf and counted.

:func:`children_search` builds the blockwise search of SVDD / CoDe on it: every particle of a query
is held as ``K`` rows; all rows step together (one call of the base step, independent rows); at a
selection step (the end of each block of ``block_size`` steps, and the last step) every row is scored
and each particle keeps one of its ``K`` rows, greedily (α = 0: arg-max, ties to the lowest index) or
by sampling ∝ exp(v / α) (α = ``params.alpha`` > 0, traced), copied over its ``K`` rows, which then
diverge again as independent children. With ``block_size = 1`` this is SVDD (Li et al. 2024, arXiv
2408.08252, Alg. 1); with larger blocks, CoDe (Singh et al. 2025, arXiv 2502.00968, Alg. 1).

Cost per query: ``P · K · nfe_per_step · (T + S − 1)`` with P particles, K children, T steps and
S = ⌈T / block_size⌉ selections (the last one needs no preview); with K = 1 nothing is selected, so no
preview is made and the search is the base sampler itself (``P · nfe_per_step · T``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, StepContext, init_state, validate, watched
from itscale.search.best_of_n import repeat_queries
from itscale.search.output import search_output, take_index, verdicts
from itscale.search.split import SearchSplit, declared_nfe_per_step

PREVIEW_STREAM = 0x9E71E  # fold-in constant: the discarded move of a preview step
SELECT_STREAM = 0x5E1EC   # fold-in constant: the draw of a soft (α > 0) selection


class ChildrenParams(NamedTuple):
    """Traced hyper-parameters: the base sampler's ``params`` and the selection temperature α ≥ 0
    (0: greedy arg-max; > 0: sample a child ∝ exp(v / α))."""

    base: Any
    alpha: Any = 0.0


_check_alpha = checks.param_ranges(alpha=(0.0, float("inf")))


def check_sampler(sampler: Sampler, reward_fn: Callable) -> None:
    """``TypeError`` unless ``sampler`` is a Sampler and ``reward_fn`` a callable."""
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (batch,)")


def scorer(reward_fn: Callable) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
    """``batch -> (scores, invalid)``: ``reward_fn`` counted as a verifier, its shape checked, NaN / +inf
    read as −inf, ``invalid`` the number of such verdicts (int32)."""
    reward = counting.counted(reward_fn, kind="verifier")

    def score(batch):
        return verdicts(reward(batch), jnp.shape(jax.tree.leaves(batch)[0])[0])

    return score


def x0_hat(sampler: Sampler, key, state, ctx: StepContext, params):
    """The base sampler's x̂₀ at ``state`` before step ``ctx``: ``info["x0_hat"]`` of that step (its
    move is discarded); costs one step of the sampler."""
    _, info = sampler.step(key, state, ctx, params)
    if not (isinstance(info, Mapping) and "x0_hat" in info):
        raise ValueError("scoring children on x0_hat needs a base sampler whose step reports info['x0_hat'] "
                         "(its.refine.sde, its.refine.ddpm, its.refine.ode with path=...)")
    return info["x0_hat"]


def score_children(sampler: Sampler, score: Callable, key, children, ctx: StepContext, params):
    """Score ``children`` (the base state after step ``ctx``): r(x̂₀(child)) by a preview step at
    ``ctx.step + 1``, or r(finalize(child)) at the last step. Returns ``(scores, invalid, looked)``,
    ``looked`` the batch that was scored (x̂₀ or the final sample; both must have one structure)."""
    is_last = ctx.step == ctx.num_steps - 1
    ahead = StepContext(ctx.step + 1, ctx.num_steps)
    preview_key = jax.random.fold_in(key, PREVIEW_STREAM)

    def final(state):
        out = sampler.finalize(state)
        return (*score(out), out)

    def preview(state):
        look = x0_hat(sampler, preview_key, state, ahead, params)
        return (*score(look), look)

    return counting.cond(is_last, final, preview, children)


def choose(key, scores: jax.Array, alpha) -> jax.Array:
    """Index along the last axis of ``scores``: arg-max (ties to the lowest) if α = 0, else a draw
    ∝ exp(scores / α). All −inf picks 0; never NaN."""
    alpha = jnp.asarray(alpha, scores.dtype)
    soft = alpha > 0
    drawn = jax.random.categorical(key, scores / jnp.where(soft, alpha, 1), axis=-1)
    return jnp.where(soft, drawn, jnp.argmax(scores, axis=-1)).astype(jnp.int32)


def children_cost(num_children: int, *, num_particles: int, num_steps: int, nfe_per_step: int,
                  block_size: int) -> int:
    """NFE per query of :func:`children_search` (see the module docstring)."""
    previews = 0 if num_children == 1 else -(-num_steps // block_size) - 1
    return num_particles * num_children * nfe_per_step * (num_steps + previews)


def plan_children(nfe_budget: int, *, num_particles: int, num_steps: int, nfe_per_step: int,
                  block_size: int) -> SearchSplit:
    """Largest K whose :func:`children_cost` fits ``nfe_budget``; ``ValueError`` naming ``nfe_budget``
    and the minimum (one child per particle, the base sampler) when none does."""
    cost = lambda k: children_cost(k, num_particles=num_particles, num_steps=num_steps,  # noqa: E731
                                   nfe_per_step=nfe_per_step, block_size=block_size)
    if nfe_budget < cost(1):
        raise ValueError(f"nfe_budget={nfe_budget} is too small: {num_particles} particle(s) over "
                         f"num_steps={num_steps} steps of up to nfe_per_step={nfe_per_step} NFE cost "
                         f"{cost(1)}; give nfe_budget >= {cost(1)}")
    k = nfe_budget // (cost(2) // 2)          # the cost is linear in K >= 2
    k = k if k >= 2 else 1
    return children_split(nfe_budget, k, num_particles=num_particles, num_steps=num_steps,
                          nfe_per_step=nfe_per_step, block_size=block_size)


def children_split(nfe_budget: int, num_children: int, *, num_particles: int, num_steps: int,
                   nfe_per_step: int, block_size: int) -> SearchSplit:
    """The :class:`SearchSplit` of P particles × K children: width P·K in P groups of K."""
    bound = children_cost(num_children, num_particles=num_particles, num_steps=num_steps,
                          nfe_per_step=nfe_per_step, block_size=block_size)
    return SearchSplit(nfe_budget, bound, 0, num_particles * num_children, num_particles, num_children,
                       num_steps, nfe_per_step, 1)


class ChildrenState(NamedTuple):
    """base: the base state on batch·P·K rows (row (b·P + p)·K + k is child k of particle p of query b);
    scores: (batch·P,) scores of the rows chosen at the last selection; invalid_rewards: NaN / +inf
    verdicts met; split: the plan (int32 arrays); slots: an empty (P, K, 0) array carrying P and K."""

    base: Any
    scores: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit
    slots: jax.Array


def _keep_rows(tree, index: jax.Array, k: int):
    """Each group of ``k`` consecutive rows replaced by copies of its row ``index[g]``."""
    def keep(a):
        chosen = take_index(a.reshape((-1, k) + a.shape[1:]), index, 1)
        return jnp.repeat(chosen, k, axis=0)
    return jax.tree.map(keep, tree)


def children_search(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int | None,
                    num_children: int | None, num_particles: int, block_size: int, alpha: float,
                    nfe_per_step: int | None, name: str) -> Sampler:
    """The blockwise children search of the module docstring, as an :class:`itscale.Sampler` whose
    output is a :class:`itscale.search.SearchOutput` (candidates: the P particles of each query)."""
    check_sampler(sampler, reward_fn)
    if (num_children is None) == (nfe_budget is None):
        raise ValueError(f"{name}: give exactly one of num_children (K) and nfe_budget (NFE per query)")
    fixed = None if num_children is None else checks.positive_int("num_children", num_children)
    if nfe_budget is not None:
        checks.positive_int("nfe_budget", nfe_budget)
        per_step = declared_nfe_per_step(sampler, nfe_per_step)
    else:
        per_step = ((sampler.nfe_per_step or 1) if nfe_per_step is None
                    else checks.positive_int("nfe_per_step", nfe_per_step))
    particles = checks.positive_int("num_particles", num_particles)
    block = checks.positive_int("block_size", block_size)
    checks.in_range("alpha", alpha, 0.0, float("inf"))
    score = scorer(reward_fn)
    shape = dict(num_particles=particles, nfe_per_step=per_step, block_size=block)

    def plan(num_steps: int) -> SearchSplit:
        if fixed is not None:
            split = children_split(0, fixed, num_steps=num_steps, **shape)
            return split._replace(nfe_budget=split.nfe_bound)
        return plan_children(nfe_budget, num_steps=num_steps, **shape)

    def init(key, x, params, ctx=None):
        if ctx is None:
            raise ValueError(f"{name} plans its selections from the run's num_steps: run it with "
                             "its.run(..., num_steps=...)")
        split = plan(ctx.num_steps)
        k = split.group_width
        rows = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), repeat_queries(sampler, key, x, particles))
        base = init_state(sampler, key, rows, params.base, ctx)
        dtype = counting.eval_shape(lambda s: score(sampler.finalize(s))[0], base).dtype
        groups = jax.tree.leaves(rows)[0].shape[0] // k
        return ChildrenState(base, jnp.zeros((groups,), dtype), jnp.zeros((), jnp.int32), split.as_arrays(),
                             jnp.zeros((particles, k, 0), jnp.int8))

    def step(key, state, ctx, params):
        k = state.slots.shape[1]
        base, info = sampler.step(key, state.base, ctx, params.base)
        is_last = ctx.step == ctx.num_steps - 1
        selecting = is_last if k == 1 else is_last | ((ctx.step + 1) % block == 0)

        def select(children):
            scores, invalid, _ = score_children(sampler, score, key, children, ctx, params.base)
            groups = scores.astype(state.scores.dtype).reshape(-1, k)
            index = choose(jax.random.fold_in(key, SELECT_STREAM), groups, params.alpha)
            return _keep_rows(children, index, k), take_index(groups, index, 1), invalid

        def skip(children):
            return children, state.scores, jnp.zeros((), jnp.int32)

        base, scores, invalid = counting.cond(selecting, select, skip, base)
        new_state = state._replace(base=base, scores=scores, invalid_rewards=state.invalid_rewards + invalid)
        return new_state, {"selected": selecting, "base": info}

    def finalize(state):
        p, k = state.slots.shape[:2]
        outputs = sampler.finalize(jax.tree.map(lambda a: a[::k], state.base))
        candidates = jax.tree.map(lambda a: a.reshape((-1, p) + a.shape[1:]), outputs)
        return search_output(candidates, state.scores.reshape(-1, p), split=state.split,
                             invalid_rewards=state.invalid_rewards)

    def check(x, params):
        _check_alpha(x, params)
        validate(sampler, x, params.base)

    return Sampler(init, step, finalize, ChildrenParams(sampler.params, alpha),
                   lambda state: watched(sampler, state.base), sampler.prior, check,
                   nfe_per_step=sampler.nfe_per_step)
