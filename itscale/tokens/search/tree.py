"""``tree_search``: step-level search over token rollouts -- expand every node by one reasoning step,
score it with a process verifier, let a selection rule give each node a number of children.

The engine behind step-level beam search (Snell et al. 2024, arXiv 2408.03314), DVTS (Beeching et al.
2024) and REBASE (Wu et al. 2024, arXiv 2408.00724); each is a *selection rule* on top of it. Per query,
``width`` slots hold the frontier of the tree, each slot one row of an ``itscale.tokens.step_rollout``
(``noise="step"``, so copies of a node diverge). One run step:

1. expand: every row generates one reasoning step (until ``separator_id`` or ``step_length`` tokens,
   ``itscale.tokens.steps``); NFE = rows per token iteration;
2. score: r = reward_fn(Generation of the partial sequences) (a PRM; counted as a verifier, one call
   per row). A NaN or +inf verdict is invalid (counted in ``invalid_rewards``) and read as −inf;
   a node with r = −inf, or in an unused slot, is dead;
3. select: ``select(scores, live, done, params) -> counts`` on arrays (batch, groups, slots) gives
   each live node its number of children for the next step (Σ over a group <= its slots); the
   children are laid out in the group's slots (``itscale.search.offspring_slots``), then reordered so
   that a node's first child takes the node's own slot: only the slots of nodes without children are
   written (``itscale.search.in_place``); unused slots are dead. Groups are the ``group_width``
   blocks of the width when ``independent_groups`` (DVTS subtrees), else the whole width is one group
   (beam search, REBASE). At the last step every kept node gets exactly one slot: the output is the
   kept set.

Finished sequences (EOS or a full buffer) are masked, never dropped or double-counted: the rules
give a finished node at most one slot (a copy would be an identical, already complete sequence), and
a finished row stops generating (``itscale.tokens.sequences``) though the model still sees it while
others run (static shapes; counted in ``stats.nfe``). Dead rows are marked finished so they never
keep the token loop running.

Expansion. ``"sample"``: children are independent samples of the step (decoding controls in
``params.base``). ``"top_k"``: the child of rank j takes its parent's j-th most likely next token (under
the model) as the first token of the step and samples the rest, so a step of one token enumerates
distinct continuations; ranks past the possible tokens are dead. The forced token's
``sample_log_probs`` entry is 0 (a deterministic choice); ``log_probs`` holds the model's. The prompt is
the root: its one node fills the whole width (``"sample"``: width independent first steps).

Budget (``itscale.tokens.search.budget``): per query NFE <= P + width × num_steps × step_length,
with the prompt prefilled once per query (``shared_prompt``); ``width`` is the largest multiple of
``group_width`` within ``nfe_budget``; run with ``num_steps`` equal to the sampler's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, watch_within
from itscale.core.sharding import write_columns
from itscale.search.allocation import offspring_slots
from itscale.search.in_place import in_place_order, resample_in_place
from itscale.tokens import sampling, sequences
from itscale.tokens.rollout import RolloutState
from itscale.tokens.search.budget import SearchSplit, check_budget, plan_search
from itscale.tokens.search.shared_prompt import replicate_rows
from itscale.tokens.sequences import Generation
from itscale.tokens.steps import step_rollout
from itscale.core.weights import takes_models

EXPANSIONS = ("sample", "top_k")


class SearchParams(NamedTuple):
    """Traced hyper-parameters of beam search and DVTS: the decoding controls of the rollout."""

    base: Any


class TreeState(NamedTuple):
    """rollout: rows (batch·width) of the step rollout; live, rank, scores: (batch, width) -- slot holds
    a node, its rank among its siblings, its last score (0 placeholder where dead, so that
    ``stats.nonfinite`` only counts faults); invalid_rewards: NaN / +inf verdicts met on live rows."""

    rollout: RolloutState
    live: jax.Array
    rank: jax.Array
    scores: jax.Array
    invalid_rewards: jax.Array


class SearchOutput(NamedTuple):
    """best: the highest-scoring kept node per query (a Generation, leading axis batch); best_score,
    best_index (batch,); candidates: the kept nodes, Generation leaves (batch, width, ...); scores
    (batch, width), −inf where ``live`` is False; valid (batch,): some node survived;
    invalid_rewards: NaN / +inf verdicts; split: how the budget was spent (:class:`SearchSplit`)."""

    best: Generation
    best_score: jax.Array
    best_index: jax.Array
    candidates: Generation
    scores: jax.Array
    live: jax.Array
    valid: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit


SelectRule = Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]


def _force_first_tokens(rollout: RolloutState, rank: jax.Array, width: int):
    """Constrain each row's next token to its parent's ``rank``-th most likely one.

    Returns the constrained rollout, the forced tokens' model log-probabilities and whether the rank
    exists (a possible token; otherwise the row is dead and takes the top token).
    """
    logits = rollout.next_logits
    log_p = sampling.model_log_probs(logits)
    k = min(width, log_p.shape[-1])
    top_log_p, top_ids = lax.top_k(log_p, k)
    clipped = jnp.minimum(rank, k - 1)[:, None]
    possible = (rank < k) & (jnp.take_along_axis(top_log_p, clipped, axis=1)[:, 0] > -jnp.inf)
    token = jnp.where(possible, jnp.take_along_axis(top_ids, clipped, axis=1)[:, 0], top_ids[:, 0])
    only = jnp.arange(logits.shape[-1]) == token[:, None]
    constrained = rollout._replace(next_logits=jnp.where(only, logits, -jnp.inf).astype(logits.dtype))
    return constrained, sampling.pick(log_p, token), possible


def _restore_model_log_probs(before: RolloutState, after: RolloutState, log_prob: jax.Array) -> RolloutState:
    """Put the model's log-probability of the forced token back (the constrained law gave it 0) and
    the unconstrained next logits of rows that did not move."""
    took = ~before.seq.done                    # active at the first token iteration: the token was written
    column = before.seq.position
    current = sampling.pick(after.seq.log_probs, jnp.minimum(column, after.seq.max_new_tokens - 1))
    log_probs = write_columns(after.seq.log_probs, column, jnp.where(took, log_prob, current))
    next_logits = jnp.where(took[:, None], after.next_logits, before.next_logits)
    return after._replace(seq=after.seq._replace(log_probs=log_probs), next_logits=next_logits)


def _take_rows(tree, index):
    """``leaf[b, index[b]]`` for leaves (batch, width, ...) and ``index`` (batch,)."""
    return jax.tree.map(lambda a: jnp.take_along_axis(
        a, index.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0], tree)


@takes_models
def tree_search(logits_fn: Callable, reward_fn: Callable, select: SelectRule, *, nfe_budget: int,
                num_steps: int, step_length: int, group_width: int = 1, group_name: str = "group",
                independent_groups: bool = False, separator_id: int | None = None, expansion: str = "sample",
                make_params: Callable[[Any], Any] = SearchParams, **rollout_options) -> Sampler:
    """Step-level tree search under a static NFE budget; see the module docstring.

    Args:
      logits_fn: ``logits_fn(tokens, cache) -> (logits, cache)`` (``itscale.tokens.model``).
      reward_fn: process verifier, ``Generation`` (rows) -> scores (rows,), higher is better.
      select: selection rule ``(scores, live, done, params) -> counts``, arrays (batch, groups, slots);
        it must give dead nodes 0 and a group at most ``slots`` children.
      nfe_budget: static NFE per query; the width is the largest multiple of ``group_width`` that fits.
      num_steps: static number of reasoning steps (run with ``its.run(..., num_steps=num_steps)``).
      step_length: static token cap of a step; separator_id: token that ends a step (kept).
      group_width: the width is a multiple of it (beam expansions, DVTS subtree width); group_name
        names it in messages. independent_groups: select within each block of ``group_width`` slots
        (True) or over the whole width (False).
      expansion: ``"sample"`` or ``"top_k"`` (see the module docstring).
      make_params: ``base_params -> params`` (a pytree with the rollout's params at ``.base``).
      rollout_options: temperature, top_k, top_p, min_p, eos_id, pad_id, init_cache, rewind, max_len
        of :func:`itscale.tokens.step_rollout`.
    """
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (Generation -> scores of shape (rows,)), got "
                        f"{type(reward_fn).__name__}")
    group_width = checks.positive_int("group_width", group_width)
    nfe_budget, num_steps, step_length = check_budget(nfe_budget, num_steps=num_steps,
                                                      step_length=step_length, group_width=group_width,
                                                      group_name=group_name)
    expansion = checks.choice("expansion", expansion, EXPANSIONS)
    base = step_rollout(logits_fn, step_length=step_length, separator_id=separator_id, noise="step",
                        max_new_tokens=num_steps * step_length, **rollout_options)
    reward = counting.counted(reward_fn, kind="verifier")

    @functools.cache
    def plan(prompt_len: int) -> SearchSplit:
        return plan_search(nfe_budget, prompt_len=prompt_len, num_steps=num_steps, step_length=step_length,
                           group_width=group_width, group_name=group_name)

    def slots_per_group(width: int) -> int:
        return group_width if independent_groups else width

    def init(key, x, params, ctx=None):
        prompts, _ = sequences.parse_prompts(x)
        batch, prompt_len = prompts.shape
        width = plan(prompt_len).width
        rollout = replicate_rows(init_state(base, key, x, params.base, ctx), width)
        rank = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32) % slots_per_group(width), (batch, width))
        dtype = rollout.seq.log_probs.dtype
        return TreeState(rollout, jnp.ones((batch, width), bool), rank, jnp.zeros((batch, width), dtype),
                         jnp.zeros((), jnp.int32))

    def step(key, state, ctx, params):
        if ctx.num_steps != num_steps:
            raise ValueError(f"this search is built for num_steps={num_steps} reasoning steps; run it with "
                             f"its.run(..., num_steps={num_steps}), got {ctx.num_steps}")
        batch, width = state.live.shape
        live = state.live.reshape(-1)
        seq = state.rollout.seq
        rollout = state.rollout._replace(seq=seq._replace(finished=seq.finished | ~live))  # dead rows wait
        if expansion == "top_k":
            rank = state.rank.reshape(-1)
            constrained, forced_log_prob, possible = _force_first_tokens(rollout, rank, width)
            expanded, _ = base.step(key, constrained, ctx, params.base)
            expanded = _restore_model_log_probs(rollout, expanded, forced_log_prob)
            live = live & possible
        else:
            expanded, _ = base.step(key, rollout, ctx, params.base)
        r = reward(base.finalize(expanded))
        if jnp.shape(r) != live.shape:
            raise ValueError(f"reward_fn must return scores of shape (rows,) = {live.shape}, got "
                             f"{jnp.shape(r)}")
        invalid = jnp.isnan(r) | (r == jnp.inf)
        alive = live & ~invalid & (r > -jnp.inf)
        size = slots_per_group(width)
        groups = (batch, width // size, size)
        scores = jnp.where(alive, r, -jnp.inf).reshape(groups)
        counts = select(scores, alive.reshape(groups), expanded.seq.done.reshape(groups), params)
        counts = jnp.where(alive.reshape(groups), counts, 0)
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
                              state.invalid_rewards + jnp.sum(invalid & live, dtype=jnp.int32))
        info = {"num_live": jnp.sum(alive.reshape(batch, width), axis=1, dtype=jnp.int32),
                "best_score": jnp.max(scores.reshape(batch, width), axis=1)}
        return new_state, info

    def finalize(state):
        batch, width = state.live.shape
        generation = base.finalize(state.rollout)
        candidates = jax.tree.map(lambda a: a.reshape((batch, width) + a.shape[1:]), generation)
        scores = jnp.where(state.live, state.scores, -jnp.inf)
        index = jnp.argmax(scores, axis=1)
        return SearchOutput(best=_take_rows(candidates, index),
                            best_score=jnp.take_along_axis(scores, index[:, None], axis=1)[:, 0],
                            best_index=index.astype(jnp.int32), candidates=candidates, scores=scores,
                            live=state.live, valid=jnp.any(state.live, axis=1),
                            invalid_rewards=state.invalid_rewards,
                            split=plan(state.rollout.seq.prompt_len).as_arrays())

    return Sampler(init, step, finalize, make_params(base.params), watch_within(base.watch, "rollout"),
                   validate=lambda x, params: base.validate(x, params.base))
