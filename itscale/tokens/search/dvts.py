"""DVTS, diverse verifier tree search (Beeching, Tunstall & Rush 2024, "Scaling test-time compute with
open models", Hugging Face blog; search-and-learn ``dvts``).

The width is split into ``width / M`` independent subtrees of beam width M. In each subtree the one
current node is expanded into M children per reasoning step and the PRM's best child becomes the next
node (greedy within the subtree, no competition between subtrees, hence diversity). A finished node
keeps one slot. The output keeps one node per subtree; ``best`` is the verifier's choice among them
(vote over ``candidates`` with :func:`itscale.tokens.search.candidate_answers` for the weighted
answer). The rule: :func:`itscale.search.selection.subtrees`; engine, budget and output:
:mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.selection import keep_best_child, subtrees
from itscale.tokens.search.tree import tree_search

__all__ = ["dvts", "keep_best_child"]


@takes_models
def dvts(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int, step_length: int,
         subtree_width: int = 4, separator_id: int | None = None, **rollout_options) -> Sampler:
    """DVTS with ``nfe_budget // (num_steps · step_length · subtree_width)`` subtrees (after the prompt)
    of ``subtree_width`` children per step.

    Output: :class:`itscale.search.SearchOutput` with candidates in ``split.num_groups`` blocks
    of ``subtree_width`` slots, the first slot of each block its subtree's final node;
    ``params`` = ``SearchParams(base=decoding params)``. Other arguments:
    :func:`itscale.tokens.search.tree_search`.
    """
    rule = subtrees(subtree_width)
    return tree_search(logits_fn, reward_fn, rule.select, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_width=rule.group_width, group_name=rule.group_name,
                       independent_groups=rule.independent_groups, separator_id=separator_id,
                       **rollout_options)
