"""REBASE, reward-balanced search (Wu et al. 2024, "Inference scaling laws", arXiv 2408.00724, §3.2).

A tree grown one reasoning step per run step within a fixed width W. After scoring the frontier with
the PRM, every completed node (EOS or full buffer) keeps one slot -- it is a finished solution and
reduces the budget, B = W − #completed -- and the open nodes share B children in proportion to
softmax(r / T): child counts round(B · softmax(r_j / T)) (largest remainder, so they sum to exactly B:
``itscale.search.apportion``). T is ``params.reward_temperature`` (traced). Children are sampled
from their parent. The output holds the final frontier and completed nodes; ``best`` is the PRM's
choice (or vote over ``candidates``). The rule: :func:`itscale.search.selection.balanced`; engine,
budget and output: :mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.selection import RebaseParams, balance_children, balanced
from itscale.tokens.search.tree import tree_search

__all__ = ["RebaseParams", "balance_children", "rebase"]


@takes_models
def rebase(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int, step_length: int,
           reward_temperature: float = 1.0, separator_id: int | None = None, **rollout_options) -> Sampler:
    """REBASE with the width ``(nfe_budget − P) // (num_steps · step_length)`` (P: prompt tokens).

    Output: :class:`itscale.search.SearchOutput`; ``params`` =
    ``RebaseParams(base=decoding params, reward_temperature)``. Other arguments:
    :func:`itscale.tokens.search.tree_search`.
    """
    rule = balanced(reward_temperature)
    return tree_search(logits_fn, reward_fn, rule.select, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_width=rule.group_width, group_name=rule.group_name,
                       independent_groups=rule.independent_groups, separator_id=separator_id,
                       make_params=rule.make_params, **rollout_options)
