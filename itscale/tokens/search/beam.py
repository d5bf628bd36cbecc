"""Step-level beam search with a process verifier (Snell et al. 2024, arXiv 2408.03314, §5.2).

N beams, each expanded into M children per reasoning step (width N·M); the PRM scores the N·M
partial sequences and the top N by score become the next beams (one global top-N, so a beam may leave
several children and another none). A finished beam keeps one slot (it is complete; its copies would
be duplicates); after the last step the output holds the top N.

With ``expansion="top_k"`` child j of a beam takes the beam's j-th most likely next token, so with
``step_length=1`` and enough beams (N ≥ V^(L−1) for L steps over a vocabulary of V, M = V) every
sequence is enumerated and, with the PRM = the model's log-probability, the search returns the exact
argmax sequence. Engine, budget and output: :mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.tokens.search.tree import tree_search
from itscale.core.weights import takes_models


def keep_top_beams(num_beams: int, expansions: int):
    """Selection rule: the ``num_beams`` best live nodes of each group get ``expansions`` children
    (finished ones 1); ties go to the lowest slot."""

    def select(scores, live, done, params):
        best, index = lax.top_k(scores, min(num_beams, scores.shape[-1]))
        children = jnp.where(jnp.take_along_axis(done, index, axis=-1), 1, expansions)
        children = jnp.where(best > -jnp.inf, children, 0).astype(jnp.int32)
        return jnp.put_along_axis(jnp.zeros(scores.shape, jnp.int32), index, children, axis=-1, inplace=False)

    return select


@takes_models
def beam_search(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int,
                step_length: int, expansions: int = 4, separator_id: int | None = None,
                expansion: str = "sample", **rollout_options) -> Sampler:
    """Beam search of ``nfe_budget // (num_steps · step_length · expansions)`` beams (after the prompt),
    each expanded into ``expansions`` children per step, keeping the top beams by ``reward_fn``.

    Output: :class:`itscale.tokens.search.SearchOutput` (``split.num_groups`` = 1,
    ``split.width`` = beams × expansions); ``params`` = ``SearchParams(base=decoding params)``.
    Other arguments: :func:`itscale.tokens.search.tree_search`.
    """
    expansions = checks.positive_int("expansions", expansions)

    def select(scores, live, done, params):
        return keep_top_beams(scores.shape[-1] // expansions, expansions)(scores, live, done, params)

    return tree_search(logits_fn, reward_fn, select, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_width=expansions, group_name="beam",
                       independent_groups=False, separator_id=separator_id, expansion=expansion,
                       **rollout_options)
