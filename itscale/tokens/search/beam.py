"""Step-level beam search with a process verifier (Snell et al. 2024, arXiv 2408.03314, §5.2).

N beams, each expanded into M children per reasoning step (width N·M); the PRM scores the N·M
partial sequences and the top N by score become the next beams (one global top-N, so a beam may leave
several children and another none). A finished beam keeps one slot (it is complete; its copies would
be duplicates); after the last step the output holds the top N.

With ``expansion="top_k"`` child j of a beam takes the beam's j-th most likely next token, so with
``step_length=1`` and enough beams (N ≥ V^(L−1) for L steps over a vocabulary of V, M = V) every
sequence is enumerated and, with the PRM = the model's log-probability, the search returns the exact
argmax sequence. The rule: :func:`itscale.search.selection.beam`; engine, budget and output:
:mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.selection import beam, keep_top_beams
from itscale.tokens.search.tree import tree_search

__all__ = ["beam_search", "keep_top_beams"]


@takes_models
def beam_search(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int,
                step_length: int, expansions: int = 4, separator_id: int | None = None,
                expansion: str = "sample", **rollout_options) -> Sampler:
    """Beam search of ``nfe_budget // (num_steps · step_length · expansions)`` beams (after the prompt),
    each expanded into ``expansions`` children per step, keeping the top beams by ``reward_fn``.

    Output: :class:`itscale.search.SearchOutput` (``split.num_groups`` = beams,
    ``split.width`` = beams × expansions); ``params`` = ``SearchParams(base=decoding params)``.
    Other arguments: :func:`itscale.tokens.search.tree_search`.
    """
    rule = beam(expansions)
    return tree_search(logits_fn, reward_fn, rule.select, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_width=rule.group_width, group_name=rule.group_name,
                       independent_groups=rule.independent_groups, separator_id=separator_id,
                       expansion=expansion, **rollout_options)
