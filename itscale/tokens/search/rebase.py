"""REBASE, reward-balanced search (Wu et al. 2024, "Inference scaling laws", arXiv 2408.00724, §3.2).

A tree grown one reasoning step per run step within a fixed width W. After scoring the frontier with
the PRM, every completed node (EOS or full buffer) keeps one slot -- it is a finished solution and
reduces the budget, B = W − #completed -- and the open nodes share B children in proportion to
softmax(r / T): child counts round(B · softmax(r_j / T)) (largest remainder, so they sum to exactly B:
``itscale.search.apportion``). T is ``params.reward_temperature`` (traced). Children are sampled
from their parent. The output holds the final frontier and completed nodes; ``best`` is the PRM's
choice (or vote over ``candidates``). Engine, budget and output: :mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.search.allocation import apportion
from itscale.tokens.search.tree import tree_search
from itscale.core.weights import takes_models


class RebaseParams(NamedTuple):
    """Traced hyper-parameters: the rollout's decoding controls and the balance temperature T > 0."""

    base: Any
    reward_temperature: Any = 1.0


def balance_children(scores, live, done, params):
    """Selection rule: one slot per completed node; the rest in proportion to softmax(r / T) of the open
    nodes (T = ``params.reward_temperature``)."""
    complete = live & done
    open_ = live & ~done
    budget = scores.shape[-1] - jnp.sum(complete, axis=-1)
    temperature = jnp.asarray(params.reward_temperature, scores.dtype)
    logits = jnp.where(open_, scores / temperature, -jnp.inf)
    return jnp.where(complete, 1, apportion(logits, budget))


@takes_models
def rebase(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int, step_length: int,
           reward_temperature: float = 1.0, separator_id: int | None = None, **rollout_options) -> Sampler:
    """REBASE with the width ``(nfe_budget − P) // (num_steps · step_length)`` (P: prompt tokens).

    Output: :class:`itscale.tokens.search.SearchOutput`; ``params`` =
    ``RebaseParams(base=decoding params, reward_temperature)``. Other arguments:
    :func:`itscale.tokens.search.tree_search`.
    """
    checks.in_range("reward_temperature", reward_temperature, 0.0, float("inf"), inclusive=False)

    def make_params(base_params):
        return RebaseParams(base_params, reward_temperature)

    return tree_search(logits_fn, reward_fn, balance_children, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_name="row", separator_id=separator_id,
                       make_params=make_params, **rollout_options)
