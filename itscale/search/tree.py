"""``tree_search(sampler, reward_fn, select, nfe_budget=B)``: tree search over the steps of any sampler.

The engine behind beam search (Snell et al. 2024, arXiv 2408.03314), DVTS (Beeching, Tunstall & Rush
2024) and REBASE (Wu et al. 2024, arXiv 2408.00724); each is a *selection rule*
(:mod:`itscale.search.selection`). Per query, ``width`` slots hold the frontier of the tree, each slot
one row of the base sampler (every state leaf leads with the rows, batch·width of them, query b at
rows b·width …). One run step:

1. expand: the base sampler takes one step on every row. Copies of a node must diverge, so the step
   must draw independent randomness per row: a refinement sampler's stochastic transition (an SDE,
   DDPM) or a token step rollout with ``noise="step"``. A deterministic step (an ODE) would grow
   identical copies: the tree degenerates to its ``width / copies`` distinct rows;
2. score: r = reward_fn(preview) (counted as a verifier, one call per row). The preview is
   ``info["x0_hat"]`` when the step reports one (a refinement sampler's denoised estimate, of the
   *pre*-step state: copies of a node share it until they have taken a step of their own, so at
   intermediate steps selection acts one step behind the branching) and ``finalize(state')``
   otherwise (e.g. the tokens so far); at the last step always ``finalize(state')``, the output.
   Under the lag, siblings tie until their next step and the tie goes to the lowest slot: a rule
   that keeps fewer nodes than a parent has children learns nothing about which child to keep
   (beam search with beams >= expansions keeps every child of its best parents; DVTS, one node per
   subtree, keeps copies of one trajectory until the last step), and where the last step is
   deterministic (an SDE ending at sigma = 0 takes x_0 = x0_hat) copies made before it end as equal
   candidates. ``preview=(state', info) -> batch`` replaces the intermediate preview (e.g. a
   look-ahead of each row's own post-step state, whose model calls then count in ``nfe_per_step``).
   A NaN or +inf verdict is invalid (counted in ``invalid_rewards``) and read as −inf; a node with
   r = −inf, or in an unused slot, is dead;
3. select: ``select(scores, live, done, params) -> counts`` on arrays (batch, groups, slots) gives
   each live node its number of children for the next step (Σ over a group <= its slots); ``done``
   marks finished nodes (all False unless the hooks say otherwise: finished token sequences);
4. reorder: the children are laid out in the group's slots (:func:`itscale.search.offspring_slots`),
   then reordered so that a node's first child takes the node's own slot: only the slots of nodes
   without children are written (:mod:`itscale.search.in_place`); unused slots are dead. Groups are
   the ``group_width`` blocks of the width when ``independent_groups`` (DVTS subtrees), else the whole
   width is one group (beam search, REBASE). At the last step every kept node gets exactly one slot:
   the output is the kept set.

Queries and roots: by default every slot of a query starts a row of its own (best-of-N's
``repeat_queries``: slot 0 from the query's noise, the others from fresh draws of the sampler's prior;
for a sampler without a prior, copies of the query). :class:`TreeHooks` change this and the other
sampler-specific parts (the token search prefills its prompt once and shares it:
:mod:`itscale.tokens.search.tree`).

Budget (:func:`itscale.search.plan_width`): per query NFE <= prompt_tokens + width × num_steps ×
nfe_per_step, ``width`` the largest multiple of ``group_width`` within ``nfe_budget``,
``nfe_per_step`` the sampler's declaration (``Sampler.nfe_per_step``) unless given, ``num_steps`` the
run's (or the one the search is built for). Output: :class:`itscale.search.SearchOutput`, candidates
(batch, width, ...) with −inf scores where no node was kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, validate, watch_within
from itscale.core.weights import takes_models
from itscale.search.allocation import offspring_slots
from itscale.search.best_of_n import repeat_queries
from itscale.search.in_place import in_place_order, resample_in_place
from itscale.search.output import is_invalid, search_output
from itscale.search.preview import preview_scores
from itscale.search.split import SearchSplit, declared_nfe_per_step, plan_width

SelectRule = Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]


class SearchParams(NamedTuple):
    """Traced hyper-parameters of beam search and DVTS: the base sampler's ``params``."""

    base: Any


class TreeState(NamedTuple):
    """base: the base sampler's state on batch·width rows; live, rank, scores: (batch, width) -- the
    slot holds a node, its rank among its siblings, its last score (0 placeholder where dead, so that
    ``stats.nonfinite`` only counts faults); invalid_rewards: NaN / +inf verdicts met on live rows;
    split: the budget's split (int32 arrays)."""

    base: Any
    live: jax.Array
    rank: jax.Array
    scores: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit


class TreeHooks(NamedTuple):
    """The sampler-specific parts of a tree search (None: the generic default).

    init_rows(key, x, base_params, ctx, width) -> base state of batch·width rows (query b at rows
      b·width …); default: ``init`` on ``repeat_queries(sampler, key, x, width)``.
    prompt_tokens(x) -> int: static NFE per query spent once before the tree grows (default 0).
    expand(key, base_state, live, rank, ctx, base_params) -> (state', info, live'): the step of every
      row, ``live`` and ``rank`` (batch, width); ``live'`` may kill rows; default: ``sampler.step``.
    done(state') -> (rows,) bool: finished nodes, which the rules give at most one slot (default none).
    """

    init_rows: Callable | None = None
    prompt_tokens: Callable[[Any], int] | None = None
    expand: Callable | None = None
    done: Callable[[Any], jax.Array] | None = None


def _batch_size(x) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves or any(jnp.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("x must lead with the batch (query) axis; got a scalar leaf")
    return jnp.shape(leaves[0])[0]


@takes_models
def tree_search(sampler: Sampler, reward_fn: Callable, select: SelectRule, *, nfe_budget: int,
                nfe_per_step: int | None = None, num_steps: int | None = None, group_width: int = 1,
                group_name: str = "group", independent_groups: bool = False,
                preview: Callable[[Any, Any], Any] | None = None,
                make_params: Callable[[Any], Any] = SearchParams, hooks: TreeHooks = TreeHooks()) -> Sampler:
    """Tree search over the steps of ``sampler`` under a static NFE budget; see the module docstring.

    Args:
      sampler: base :class:`itscale.Sampler` (state leaves lead with the rows; stochastic steps).
      reward_fn: batch -> scores of shape (rows,), higher is better; −inf marks impossible nodes.
      select: selection rule ``(scores, live, done, params) -> counts``, arrays (batch, groups, slots);
        it must give dead nodes 0 and a group at most ``slots`` children (:mod:`itscale.search.selection`).
      nfe_budget: static NFE per query; the width is the largest multiple of ``group_width`` that fits.
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
      num_steps: static number of steps the search is built for (the run must use it); None: the run's.
      group_width: the width is a multiple of it (beam expansions, DVTS subtree width); group_name
        names it in messages. independent_groups: select within each block of ``group_width`` slots
        (True) or over the whole width (False).
      preview: ``(state', info) -> batch`` scored at intermediate steps (see the module docstring).
      make_params: ``base_params -> params`` (a pytree with the base sampler's params at ``.base``).
      hooks: :class:`TreeHooks`, the sampler-specific parts.
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (rows,)")
    if preview is not None and not callable(preview):
        raise TypeError(f"preview must be None or a callable (state, info) -> batch, got {type(preview).__name__}")
    nfe_budget = checks.positive_int("nfe_budget", nfe_budget)
    per_step = declared_nfe_per_step(sampler, nfe_per_step)
    fixed_steps = None if num_steps is None else checks.positive_int("num_steps", num_steps)
    group_width = checks.positive_int("group_width", group_width)
    reward = counting.counted(reward_fn, kind="verifier")
    prompt_tokens = hooks.prompt_tokens or (lambda x: 0)

    def init_rows(key, x, params, ctx, width):
        return init_state(sampler, key, repeat_queries(sampler, key, x, width), params, ctx)

    def expand(key, state, live, rank, ctx, params):
        new_state, info = sampler.step(key, state, ctx, params)
        return new_state, info, live

    init_rows = hooks.init_rows or init_rows
    expand = hooks.expand or expand

    def score(batch) -> jax.Array:
        r = reward(batch)
        rows = jnp.shape(jax.tree.leaves(batch)[0])[0]
        if jnp.shape(r) != (rows,):
            raise ValueError(f"reward_fn must return scores of shape (rows,) = ({rows},), got {jnp.shape(r)}")
        return r

    def steps_of(ctx) -> int:
        if ctx is None:
            if fixed_steps is None:
                raise ValueError("tree_search plans its width from the run's num_steps: run it with "
                                 "its.run(..., num_steps=...)")
            return fixed_steps
        if fixed_steps is not None and ctx.num_steps != fixed_steps:
            raise ValueError(f"this search is built for num_steps={fixed_steps} steps; run it with "
                             f"its.run(..., num_steps={fixed_steps}), got {ctx.num_steps}")
        return ctx.num_steps

    def slots_per_group(width: int) -> int:
        return group_width if independent_groups else width

    def init(key, x, params, ctx=None):
        batch = _batch_size(x)
        split = plan_width(nfe_budget, num_steps=steps_of(ctx), nfe_per_step=per_step,
                           prompt_tokens=prompt_tokens(x), group_width=group_width, group_name=group_name)
        width = split.width
        base = init_rows(key, x, params.base, ctx, width)
        dtype = jnp.promote_types(counting.eval_shape(lambda s: score(sampler.finalize(s)), base).dtype,
                                  jnp.float32)
        rank = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32) % slots_per_group(width), (batch, width))
        return TreeState(base, jnp.ones((batch, width), bool), rank, jnp.zeros((batch, width), dtype),
                         jnp.zeros((), jnp.int32), split.as_arrays())

    def step(key, state, ctx, params):
        batch, width = state.live.shape
        expanded, info, live = expand(key, state.base, state.live, state.rank, ctx, params.base)
        live = live.reshape(-1)
        r = preview_scores(sampler, score, preview, expanded, info, ctx.step == ctx.num_steps - 1)
        invalid = is_invalid(r)
        alive = live & ~invalid & (r > -jnp.inf)
        size = slots_per_group(width)
        groups = (batch, width // size, size)
        scores = jnp.where(alive, r, -jnp.inf).reshape(groups)
        done = jnp.zeros(groups, bool) if hooks.done is None else hooks.done(expanded).reshape(groups)
        counts = jnp.where(alive.reshape(groups), select(scores, alive.reshape(groups), done, params), 0)
        counts = jnp.where(ctx.step == ctx.num_steps - 1, jnp.minimum(counts, 1), counts)
        slots = offspring_slots(counts)
        group_start = jnp.arange(batch * width // size)[:, None] * size
        rows = (group_start + slots.parent.reshape(-1, size)).reshape(-1)
        kept = jnp.where(slots.used, jnp.take_along_axis(scores, slots.parent, axis=-1), 0)
        # Children of a row take its slot first, so only the slots of rows without children are written.
        order = in_place_order(rows)
        in_order = lambda a: a.reshape(-1)[order].reshape(batch, width)  # noqa: E731
        new_state = TreeState(resample_in_place(expanded, rows[order]), in_order(slots.used),
                              in_order(slots.rank), in_order(kept).astype(state.scores.dtype),
                              state.invalid_rewards + jnp.sum(invalid & live, dtype=jnp.int32), state.split)
        step_info = {"num_live": jnp.sum(alive.reshape(batch, width), axis=1, dtype=jnp.int32),
                     "best_score": jnp.max(scores.reshape(batch, width), axis=1)}
        return new_state, step_info

    def finalize(state):
        batch, width = state.live.shape
        outputs = sampler.finalize(state.base)
        candidates = jax.tree.map(lambda a: a.reshape((batch, width) + a.shape[1:]), outputs)
        return search_output(candidates, jnp.where(state.live, state.scores, -jnp.inf), split=state.split,
                             invalid_rewards=state.invalid_rewards)

    return Sampler(init, step, finalize, make_params(sampler.params), watch_within(sampler.watch, "base"),
                   sampler.prior, lambda x, params: validate(sampler, x, params.base))
