"""``tree_search``: step-level search over token rollouts -- the generic engine
(:func:`itscale.search.tree.tree_search`) on a step rollout, with the LM-specific hooks only.

The engine behind step-level beam search (Snell et al. 2024, arXiv 2408.03314), DVTS (Beeching et al.
2024) and REBASE (Wu et al. 2024, arXiv 2408.00724), each a selection rule of
:mod:`itscale.search.selection`. Each slot of the frontier is one row of an
``itscale.tokens.step_rollout`` (``noise="step"``, so copies of a node diverge); a run step expands
every row by one reasoning step (until ``separator_id`` or ``step_length`` tokens,
``itscale.tokens.steps``; NFE = rows per token iteration), scores the partial sequences with the
process verifier ``reward_fn`` (a ``Generation``; one verifier call per row), selects and reorders
in place as the generic engine does. What is LM-specific:

* the prompt is the root: it is prefilled once per query and its state copied to the whole width
  (``shared_prompt``; ``"sample"``: width independent first steps);
* finished sequences (EOS or a full buffer) are masked, never dropped or double-counted: the rules
  give a finished node at most one slot (``done``), and a finished row stops generating
  (``itscale.tokens.sequences``) though the model still sees it while others run (static shapes;
  counted in ``stats.nfe``). Dead rows are marked finished so they never keep the token loop running;
* expansion ``"sample"``: children are independent samples of the step (decoding controls in
  ``params.base``). ``"top_k"``: the child of rank j takes its parent's j-th most likely next token
  (under the model) as the first token of the step and samples the rest, so a step of one token
  enumerates distinct continuations; ranks past the possible tokens are dead. The forced token's
  ``sample_log_probs`` entry is 0 (a deterministic choice); ``log_probs`` holds the model's.

Budget (``itscale.tokens.search.budget``): per query NFE <= P + width × num_steps × step_length,
``width`` the largest multiple of ``group_width`` within ``nfe_budget``; run with ``num_steps`` equal
to the sampler's. Output: :class:`itscale.search.SearchOutput` with ``Generation`` candidates (batch,
width, ...), scores −inf where no node was kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks
from itscale.core.sampler import Sampler, init_state
from itscale.core.sharding import write_columns
from itscale.core.weights import takes_models
from itscale.search import tree
from itscale.search.output import SearchOutput
from itscale.search.tree import SearchParams, SelectRule, TreeHooks, TreeState
from itscale.tokens import sampling, sequences
from itscale.tokens.rollout import RolloutState
from itscale.tokens.search.budget import check_budget
from itscale.tokens.search.shared_prompt import replicate_rows
from itscale.tokens.steps import step_rollout

EXPANSIONS = ("sample", "top_k")
__all__ = ["EXPANSIONS", "SearchOutput", "SearchParams", "TreeState", "token_hooks", "tree_search"]


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


def token_hooks(base: Sampler, expansion: str) -> TreeHooks:
    """The LM-specific parts of the engine for the step rollout ``base`` (see the module docstring)."""

    def init_rows(key, x, params, ctx, width):
        return replicate_rows(init_state(base, key, x, params, ctx), width)

    def expand(key, rollout, live, rank, ctx, params):
        width = live.shape[1]
        live = live.reshape(-1)
        seq = rollout.seq
        rollout = rollout._replace(seq=seq._replace(finished=seq.finished | ~live))  # dead rows wait
        if expansion == "top_k":
            constrained, forced_log_prob, possible = _force_first_tokens(rollout, rank.reshape(-1), width)
            expanded, info = base.step(key, constrained, ctx, params)
            return _restore_model_log_probs(rollout, expanded, forced_log_prob), info, live & possible
        expanded, info = base.step(key, rollout, ctx, params)
        return expanded, info, live

    return TreeHooks(init_rows, lambda x: sequences.parse_prompts(x)[0].shape[1], expand,
                     lambda rollout: rollout.seq.done)


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
    checks.function("reward_fn", reward_fn, "Generation -> scores of shape (rows,)")
    group_width = checks.positive_int("group_width", group_width)
    nfe_budget, num_steps, step_length = check_budget(nfe_budget, num_steps=num_steps,
                                                      step_length=step_length, group_width=group_width,
                                                      group_name=group_name)
    expansion = checks.choice("expansion", expansion, EXPANSIONS)
    base = step_rollout(logits_fn, step_length=step_length, separator_id=separator_id, noise="step",
                        max_new_tokens=num_steps * step_length, **rollout_options)
    return tree.tree_search(base, reward_fn, select, nfe_budget=nfe_budget, nfe_per_step=step_length,
                            num_steps=num_steps, group_width=group_width, group_name=group_name,
                            independent_groups=independent_groups, make_params=make_params,
                            hooks=token_hooks(base, expansion))
