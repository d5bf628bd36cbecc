"""Compute allocated per query by difficulty: a planner over measured curves, and one masked program.

Snell et al. 2024 (arXiv 2408.03314, Sec. 3.1, eq. 1) choose, per difficulty tier, the test-time
strategy and hyper-parameters that maximise the measured accuracy at the tier's budget
("compute-optimal" scaling). :func:`plan_allocation` does this exactly on a grid, from curves
``accuracy[d, o, g]``: the accuracy of tier d with option o (a strategy at its depth: best-of-N,
vote, more steps) at width ``widths[g]``, costing ``nfe_per_width[o] · widths[g]`` NFE per query
(``nfe_per_width[o]`` = the option's steps × NFE per step × rounds). With ``n_d`` queries in tier d and a
total budget B it solves

    max Σ_d n_d · accuracy[d, o_d, g_d]   s.t.   Σ_d n_d · nfe_per_width[o_d] · widths[g_d] <= B

by a dynamic programme over tiers on the Pareto front (spend, value) — exact, no relaxation. With
``redistribute=False`` every query gets the same share ⌊B / N⌋ and each tier picks its best option
within it (Snell et al.'s setting); :func:`uniform_allocation` is the baseline with one option and
width for all. NaN accuracies mark unmeasured grid points. Planning is host-side (NumPy, static ints).

Execution: :func:`allocated_search` runs a batch of queries with *per-query* widths and options as ONE
compiled program, in static *budget buckets*: bucket b holds up to c_b queries at w_b candidates each,
so the base sampler runs Σ_b c_b w_b rows. A query goes to the narrowest bucket with w_b >= width_q
that has room (a full bucket overflows into the next wider one; a query no bucket can hold is dropped,
``info["dropped"]``, and an error when the widths are concrete). Without buckets there is one, of
width ``max_width`` and room for the whole batch (every query runs ``max_width`` candidates, as
:func:`itscale.search.best_of_n`, bit for bit). :func:`width_buckets` turns a plan's per-query widths
into exact buckets, so that the executed compute is the allocated one. Inside its slot a query's
candidates j >= width_q are masked (score −inf, no answer), and its option selects among the rest by
masks — argmax of the score (``"best_of_n"``), the majority answer (``"majority_vote"``) or the
score-weighted answer (``"weighted_vote"``, scores read as nonnegative weights), the chosen candidate
being the best-scored one with the winning answer — so no ``lax.switch`` and no recompiling for new
widths. Honest NFE: ``stats.nfe`` is what ran (rows × (row_init + steps × NFE per step), empty slots
included); ``info["nfe_allocated"]`` is each query's planned share (width_q × (row_init + steps × NFE per
step)) and ``info["nfe_executed"]`` its slot's (w_b × the same), with ``row_init`` what the base
sampler's ``init`` spends per row (a prompt's prefill; :func:`itscale.search.init_nfe_per_row`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, watch_within
from itscale.core.weights import takes_models
from itscale.search.best_of_n import fresh_copies
from itscale.search.output import invalid_as_impossible, is_invalid, search_output, take_index
from itscale.search.split import SearchSplit, fixed_split, init_nfe_per_row
from itscale.search.voting import NO_ANSWER, majority_vote, weighted_vote

RULES = ("best_of_n", "majority_vote", "weighted_vote")


class AllocationPlan(NamedTuple):
    """Per tier d: ``option`` (index into the curves' options), ``width``, ``nfe`` per query
    (= nfe_per_width[option] · width) and its measured ``accuracy``; ``expected_accuracy`` the mean over
    queries Σ_d n_d accuracy_d / Σ_d n_d, ``total_nfe`` = Σ_d n_d nfe_d <= the budget."""

    option: np.ndarray
    width: np.ndarray
    nfe: np.ndarray
    accuracy: np.ndarray
    expected_accuracy: float
    total_nfe: int


def _curves(accuracy, widths, nfe_per_width, tier_sizes):
    acc = np.asarray(accuracy, float)
    if acc.ndim != 3:
        raise ValueError(f"accuracy must have shape (tiers, options, widths), got {acc.shape}")
    widths, cost, sizes = (np.asarray(v) for v in (widths, nfe_per_width, tier_sizes))
    for name, v, n in (("widths", widths, acc.shape[2]), ("nfe_per_width", cost, acc.shape[1]),
                       ("tier_sizes", sizes, acc.shape[0])):
        if v.shape != (n,) or v.dtype.kind not in "iu" or np.any(v < (0 if name == "tier_sizes" else 1)):
            raise ValueError(f"{name} must be {n} {'non-negative' if name == 'tier_sizes' else 'positive'} "
                             f"ints to match accuracy of shape {acc.shape}, got {v.tolist()}")
    unmeasured = np.flatnonzero((sizes > 0) & ~np.isfinite(acc).reshape(acc.shape[0], -1).any(axis=1))
    if unmeasured.size:
        raise ValueError(f"accuracy has no measured (finite) entry for tier(s) {unmeasured.tolist()}, which "
                         f"hold queries (tier_sizes {sizes[unmeasured].tolist()}); measure them, or move their "
                         "queries to a calibrated tier (itscale.scaling.nearest_calibrated_tier)")
    nfe = (cost[:, None] * widths[None, :]).astype(np.int64).ravel()          # (options · widths,)
    return acc.reshape(acc.shape[0], -1), nfe, sizes.astype(np.int64), widths.astype(np.int64)


def _cheapest_best(values, nfe) -> int:
    """Index of the largest value; among equal ones the cheapest, then the lowest index."""
    top = np.flatnonzero(values == values.max())
    return int(top[np.argmin(nfe[top])])


def _plan(choices, flat_acc, nfe, sizes, widths) -> AllocationPlan:
    choices = np.asarray(choices, np.int64)
    tiers = np.arange(flat_acc.shape[0])
    acc = flat_acc[tiers, choices]
    total = int(np.sum(sizes * nfe[choices]))
    mean = float(np.sum(np.where(sizes > 0, sizes * acc, 0.0)) / max(int(sizes.sum()), 1))
    option, grid = np.divmod(choices, widths.size)
    return AllocationPlan(option, widths[grid], nfe[choices], acc, mean, total)


def _too_small(flat_acc, nfe, sizes, budget, per_query: bool):
    cheapest = np.array([nfe[np.isfinite(row)].min() if size else 0 for row, size in zip(flat_acc, sizes)])
    need = int(cheapest.max()) if per_query else int(np.sum(sizes * cheapest))
    what = "each query's share nfe_budget // num_queries" if per_query else "nfe_budget"
    return ValueError(f"{what} is too small: the cheapest measured option of every tier needs "
                      f"{need} NFE{' per query' if per_query else ''}, got nfe_budget={budget}")


def plan_allocation(accuracy, widths, nfe_per_width, tier_sizes, nfe_budget: int, *,
                    redistribute: bool = True) -> AllocationPlan:
    """The exact accuracy-maximising (option, width) per tier under a total budget; see the module doc.

    Args:
      accuracy: (tiers, options, widths) measured accuracy (NaN: not measured).
      widths: (widths,) positive ints, the width grid. nfe_per_width: (options,) positive ints, NFE per
        query and unit of width of each option. tier_sizes: (tiers,) queries per tier.
      nfe_budget: total NFE of the batch (static int).
      redistribute: move budget between tiers (default); False gives every query ⌊B / N⌋.
    Ties: the cheaper plan.
    """
    budget = checks.positive_int("nfe_budget", nfe_budget)
    flat_acc, nfe, sizes, widths = _curves(accuracy, widths, nfe_per_width, tier_sizes)
    measured = np.isfinite(flat_acc)
    if not redistribute:
        share = budget // max(int(sizes.sum()), 1)
        fits = measured & (nfe[None, :] <= share)
        if not np.all(fits.any(axis=1) | (sizes == 0)):
            raise _too_small(flat_acc, nfe, sizes, budget, per_query=True)
        best = [_cheapest_best(row, nfe) for row in np.where(fits, flat_acc, -np.inf)]
        return _plan(best, flat_acc, nfe, sizes, widths)
    front = {0: (0.0, ())}                                       # spend -> (value, choices), Pareto front
    for d in range(flat_acc.shape[0]):
        grown: dict[int, tuple[float, tuple]] = {}
        options = [c for c in range(nfe.size) if measured[d, c]] if sizes[d] else [0]
        for spend, (value, chosen) in front.items():
            for c in options:
                cost = spend + int(sizes[d] * nfe[c])
                gain = value + float(sizes[d] * flat_acc[d, c]) if sizes[d] else value
                if cost <= budget and (cost not in grown or gain > grown[cost][0]):
                    grown[cost] = (gain, chosen + (c,))
        if not grown:
            raise _too_small(flat_acc, nfe, sizes, budget, per_query=False)
        front, best = {}, -np.inf
        for cost in sorted(grown):
            if grown[cost][0] > best:
                front[cost], best = grown[cost], grown[cost][0]
    return _plan(front[max(front)][1], flat_acc, nfe, sizes, widths)


def uniform_allocation(accuracy, widths, nfe_per_width, tier_sizes, nfe_budget: int) -> AllocationPlan:
    """The baseline: one (option, width) for every query, the best whose total cost fits the budget."""
    budget = checks.positive_int("nfe_budget", nfe_budget)
    flat_acc, nfe, sizes, widths = _curves(accuracy, widths, nfe_per_width, tier_sizes)
    usable = np.isfinite(flat_acc) | (sizes[:, None] == 0)               # an empty tier accepts anything
    per_tier = np.where(usable, sizes[:, None] * np.nan_to_num(flat_acc), -np.inf)
    total = np.where(nfe * int(sizes.sum()) <= budget, np.sum(per_tier, axis=0), -np.inf)
    if not np.isfinite(total).any():
        raise _too_small(flat_acc, nfe, sizes, budget, per_query=False)
    return _plan([_cheapest_best(total, nfe)] * flat_acc.shape[0], flat_acc, nfe, sizes, widths)


def allocate(plan: AllocationPlan, tiers) -> tuple[jax.Array, jax.Array]:
    """Per-query ``(width, option)`` (int32, shape of ``tiers``) from a plan and the queries' tiers."""
    tiers = jnp.asarray(tiers)
    return (jnp.asarray(plan.width, jnp.int32)[tiers], jnp.asarray(plan.option, jnp.int32)[tiers])


def width_buckets(width) -> tuple[tuple[int, int], ...]:
    """The exact ``buckets`` of :func:`allocated_search` for concrete per-query widths: one
    ``(w, count)`` per distinct width, so that every query runs exactly its own width."""
    host = np.asarray(width)
    if host.ndim != 1 or host.dtype.kind not in "iu" or host.size == 0 or np.any(host < 1):
        raise ValueError(f"width must be a non-empty 1-d array of positive ints, got {host.tolist()}")
    return tuple((int(w), int(c)) for w, c in zip(*np.unique(host, return_counts=True)))


class AllocatedQueries(NamedTuple):
    """The ``x`` of :func:`allocated_search`: ``queries`` (batch, ...) as for best-of-N, each query's
    ``width`` (batch,) in [1, max_width] and ``option`` (batch,) an index into the sampler's rules."""

    queries: Any
    width: jax.Array
    option: jax.Array


class Selection(NamedTuple):
    """index (batch,): the chosen candidate; answer (batch,): its answer id (NO_ANSWER without answers)."""

    index: jax.Array
    answer: jax.Array


def _best_with(eligible, scores):
    """Per row, the best-scored eligible candidate (ties and all −inf: the first eligible)."""
    scored = jnp.where(eligible, scores, -jnp.inf)
    has_score = jnp.any(scored > -jnp.inf, axis=-1)
    return jnp.where(has_score, jnp.argmax(scored, axis=-1), jnp.argmax(eligible, axis=-1)).astype(jnp.int32)


def masked_select(scores, width, option, *, rules: tuple[str, ...] = ("best_of_n",),
                  answers=None) -> Selection:
    """Each query's choice among its first ``width`` candidates by rule ``rules[option]`` (masks only).

    ``scores`` (batch, W) (NaN / +inf read as −inf), ``width`` and ``option`` (batch,) int arrays,
    ``answers`` (batch, W) int ids (needed by the vote rules). Equal, bit for bit, to selecting on
    ``scores[q, :width_q]`` alone (see the module doc for the rules).
    """
    rules = tuple(checks.choice("rules", r, RULES) for r in rules)
    scores = invalid_as_impossible(jnp.asarray(scores))
    active = jnp.arange(scores.shape[-1]) < jnp.asarray(width)[..., None]
    if answers is None:
        if any(r != "best_of_n" for r in rules):
            raise ValueError(f"rules {rules} include a vote: pass answers (batch, width) of int ids")
        answers = jnp.full(scores.shape, NO_ANSWER, jnp.int32)
    answers = jnp.where(active, jnp.asarray(answers), NO_ANSWER)
    picks = []
    for rule in rules:
        if rule == "best_of_n":
            eligible = active
        else:
            weights = jnp.where(active & (scores > -jnp.inf), jnp.maximum(scores, 0), 0)
            vote = majority_vote(answers) if rule == "majority_vote" else weighted_vote(answers, weights)
            eligible = active & ((answers == vote.answer[..., None]) | (vote.answer[..., None] == NO_ANSWER))
        picks.append(_best_with(eligible, scores))
    option = jnp.asarray(option)
    index = picks[0]
    for r, pick in enumerate(picks[1:], start=1):
        index = jnp.where(option == r, pick, index)
    return Selection(index, take_index(answers, index, scores.ndim - 1))


class BucketLayout(NamedTuple):
    """Where each query runs: ``row_query`` (rows,) the query of each base row and ``row_first`` whether
    it is the first row of its slot (the query's own noise); ``candidate_row`` (batch, max_width) the row
    of each of a query's candidates (0 past its slot); ``slot_width`` (batch,) its bucket's width (0 when
    dropped)."""

    row_query: jax.Array
    row_first: jax.Array
    candidate_row: jax.Array
    slot_width: jax.Array


def _checked_buckets(buckets, max_width: int) -> tuple[tuple[int, int], ...] | None:
    if buckets is None:
        return None
    try:
        pairs = tuple((checks.positive_int("buckets width", w), checks.positive_int("buckets capacity", c))
                      for w, c in buckets)
    except (TypeError, ValueError) as error:
        raise ValueError(f"buckets must be (width, capacity) pairs of positive ints, got {buckets!r}") from error
    widths = [w for w, _ in pairs]
    if not pairs or widths != sorted(set(widths)) or widths[-1] > max_width:
        raise ValueError(f"buckets must have strictly increasing widths <= max_width={max_width}, got {pairs}")
    return pairs


def _slots(bucket_of_query, first_slot):
    """The slot of each query: in order of bucket (stable), the first free slot of its bucket or a later
    one: pos_i = i + max_{j <= i}(first_j − j) over the sorted queries (past the last slot: dropped)."""
    order = jnp.argsort(bucket_of_query, stable=True)
    index = jnp.arange(order.shape[0], dtype=jnp.int32)
    sorted_slot = index + jax.lax.cummax(first_slot[bucket_of_query[order]] - index)
    return jnp.zeros_like(sorted_slot).at[order].set(sorted_slot)


def _bucket_layout(buckets, width, max_width: int) -> BucketLayout:
    batch = width.shape[0]
    pairs = buckets or ((max_width, batch),)
    bucket_width = np.array([w for w, _ in pairs], np.int32)
    capacity = np.array([c for _, c in pairs], np.int64)
    slot_width = np.repeat(bucket_width, capacity)                          # (slots,), static
    slot_start = np.concatenate([[0], np.cumsum(slot_width)[:-1]]).astype(np.int32)
    first_slot = jnp.asarray(np.concatenate([[0], np.cumsum(capacity)[:-1]]), jnp.int32)
    row_slot = np.repeat(np.arange(slot_width.size), slot_width)           # (rows,), static
    bucket_of_query = jnp.searchsorted(jnp.asarray(bucket_width), width, side="left").astype(jnp.int32)
    slot = _slots(jnp.minimum(bucket_of_query, len(pairs) - 1), first_slot)
    slot = jnp.where(bucket_of_query < len(pairs), slot, slot_width.size)   # wider than every bucket
    kept = slot < slot_width.size
    slot_query = jnp.zeros(slot_width.size, jnp.int32).at[jnp.where(kept, slot, slot_width.size)].set(
        jnp.arange(batch, dtype=jnp.int32), mode="drop")
    safe = jnp.where(kept, slot, 0)
    own_width = jnp.where(kept, jnp.asarray(slot_width)[safe], 0)
    column = jnp.arange(max_width)
    candidate_row = jnp.where(column < own_width[:, None], jnp.asarray(slot_start)[safe][:, None] + column, 0)
    row_first = jnp.asarray(np.arange(row_slot.size) == np.repeat(slot_start, slot_width))
    return BucketLayout(slot_query[jnp.asarray(row_slot)], row_first, candidate_row.astype(jnp.int32), own_width)


class AllocatedState(NamedTuple):
    """base: the base sampler on the buckets' rows; width, option: per query; layout: where each query
    runs; split: at max_width."""

    base: Any
    width: jax.Array
    option: jax.Array
    layout: BucketLayout
    split: SearchSplit


@takes_models
def allocated_search(sampler: Sampler, reward_fn: Callable, *, max_width: int,
                     rules: tuple[str, ...] = ("best_of_n",), answer_fn: Callable | None = None,
                     nfe_per_step: int | None = None, buckets=None) -> Sampler:
    """Per-query widths and selection rules in one compiled program; run on :class:`AllocatedQueries`.

    Args:
      sampler: base :class:`itscale.Sampler` (as for :func:`itscale.search.best_of_n`).
      reward_fn: batch -> scores (batch,), higher is better (counted as verifier calls).
      max_width: static largest width.
      rules: static tuple of selection rules from ``RULES``; ``option`` indexes it.
      answer_fn: outputs -> int answer ids (rows,), needed by the vote rules.
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
      buckets: static ``((width, capacity), ...)``, widths increasing and <= ``max_width``
        (:func:`width_buckets`); None: every query runs ``max_width`` candidates (see the module doc).
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (batch,)")
    width_max = checks.positive_int("max_width", max_width)
    rules = tuple(checks.choice("rules", r, RULES) for r in rules)
    if not rules:
        raise ValueError(f"rules must name at least one of {RULES}")
    if answer_fn is None and any(r != "best_of_n" for r in rules):
        raise ValueError(f"rules {rules} include a vote: pass answer_fn (outputs -> int ids of shape "
                         "(rows,))")
    buckets = _checked_buckets(buckets, width_max)
    per_step = (sampler.nfe_per_step or 1) if nfe_per_step is None else checks.positive_int("nfe_per_step",
                                                                                         nfe_per_step)
    reward = counting.counted(reward_fn, kind="verifier")

    def validate(x, params):
        if not isinstance(x, AllocatedQueries):
            raise TypeError(f"allocated_search runs on AllocatedQueries(queries, width, option), got "
                            f"{type(x).__name__}")
        hosts = {}
        for name, value, high in (("width", x.width, width_max), ("option", x.option, len(rules) - 1)):
            host = hosts[name] = checks.concrete(value)
            low = 1 if name == "width" else 0
            if host is not None and (host.dtype.kind not in "iu" or np.any((host < low) | (host > high))):
                raise ValueError(f"x.{name} must be ints in [{low}, {high}], got {host.tolist()}")
        host = hosts["width"]
        if buckets is not None and host is not None:
            dropped = int(jnp.sum(_bucket_layout(buckets, jnp.asarray(host, jnp.int32), width_max).slot_width == 0))
            if dropped:
                raise ValueError(f"buckets {buckets} cannot hold {dropped} of the queries (widths "
                                 f"{host.tolist()}): give more capacity, e.g. width_buckets(width)")
        if sampler.validate is not None:
            sampler.validate(x.queries, params)

    def init(key, x, params, ctx=None):
        num_steps = 1 if ctx is None else ctx.num_steps
        split = fixed_split(width_max, num_steps=num_steps, nfe_per_step=per_step,
                            row_init=init_nfe_per_row(sampler, key, x.queries, params, ctx))
        width = jnp.clip(jnp.asarray(x.width, jnp.int32), 1, width_max)
        layout = _bucket_layout(buckets, width, width_max)
        rows = jax.tree.map(lambda a: a[layout.row_query], x.queries)
        base = init_state(sampler, key, fresh_copies(sampler, key, rows, layout.row_first), params, ctx)
        return AllocatedState(base, width, jnp.asarray(x.option, jnp.int32), layout, split.as_arrays())

    def step(key, state, ctx, params):
        base, info = sampler.step(key, state.base, ctx, params)
        return state._replace(base=base), info

    def finalize(state):
        outputs = sampler.finalize(state.base)
        rows = state.layout.row_query.shape[0]
        batch = state.width.shape[0]
        scores = reward(outputs)
        if jnp.shape(scores) != (rows,):
            raise ValueError(f"reward_fn must return scores of shape (rows,) = ({rows},) for the {rows} rows "
                             f"the buckets run, got shape {jnp.shape(scores)}")
        row = state.layout.candidate_row
        width = jnp.where(state.layout.slot_width > 0, state.width, 0)       # a dropped query has none
        active = jnp.arange(width_max) < width[:, None]
        scores = scores[row]
        invalid = jnp.sum(active & is_invalid(scores), dtype=jnp.int32)
        answers = None if answer_fn is None else jnp.asarray(answer_fn(outputs))[row]
        chosen = masked_select(scores, width, state.option, rules=rules, answers=answers)
        masked = jnp.where(active, invalid_as_impossible(scores), -jnp.inf)
        candidates = jax.tree.map(lambda a: a[row], outputs)
        per_width = state.split.row_init + state.split.num_steps * state.split.nfe_per_step
        info = {"width": state.width, "option": state.option, "answer": chosen.answer,
                "nfe_allocated": state.width * per_width, "nfe_executed": state.layout.slot_width * per_width,
                "dropped": state.layout.slot_width == 0}
        out = search_output(candidates, masked, split=state.split, invalid_rewards=invalid, info=info)
        return out._replace(best=take_index(candidates, chosen.index, 1),
                            best_score=take_index(masked, chosen.index, 1), best_index=chosen.index)

    return Sampler(init, step, finalize, sampler.params, watch_within(sampler.watch, "base"), sampler.prior,
                   validate, nfe_per_step=sampler.nfe_per_step)
