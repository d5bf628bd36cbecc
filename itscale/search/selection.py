"""Selection rules of tree search and the searches they make: beam search, DVTS, REBASE over any sampler.

A rule maps the frontier's ``scores``, ``live`` and ``done`` (arrays (batch, groups, slots)) and the
traced ``params`` to each node's number of children (:func:`itscale.search.tree.tree_search`):

* beam search (Snell et al. 2024, arXiv 2408.03314, §5.2): N beams, each expanded into M children per
  step (width N·M); the top N of the N·M children by score become the next beams (one global top-N,
  so a beam may leave several children and another none) -- :func:`keep_top_beams`;
* DVTS (Beeching, Tunstall & Rush 2024, "Scaling test-time compute with open models"): width / M
  independent subtrees; in each, the best of the M children becomes the one node expanded next
  (greedy within a subtree, no competition between subtrees) -- :func:`keep_best_child`;
* REBASE (Wu et al. 2024, arXiv 2408.00724, §3.2): finished nodes keep one slot each (B = W −
  #finished) and the open nodes share B children round(B · softmax(r / T)) (largest remainder,
  :func:`itscale.search.apportion`), T = ``params.reward_temperature`` (traced) --
  :func:`balance_children`. With a constant reward every open node gets one child: the base sampler.

A finished node (``done``; token sequences that hit EOS) gets at most one slot under every rule (a copy
would be an identical, complete output). :class:`TreeRule` bundles a rule with the group layout it
needs (:func:`beam`, :func:`subtrees`, :func:`balanced`), shared by the searches over any sampler here
and the token searches (:mod:`itscale.tokens.search`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.allocation import apportion
from itscale.search.tree import SearchParams, SelectRule, tree_search


class RebaseParams(NamedTuple):
    """Traced hyper-parameters of REBASE: the base sampler's ``params`` and the temperature T > 0."""

    base: Any
    reward_temperature: Any = 1.0


class TreeRule(NamedTuple):
    """A selection rule with its layout: the width is a multiple of ``group_width`` (named
    ``group_name`` in messages), selected within blocks of it when ``independent_groups``;
    ``make_params(base_params)`` builds the traced params the rule reads."""

    select: SelectRule
    group_width: int = 1
    group_name: str = "row"
    independent_groups: bool = False
    make_params: Callable[[Any], Any] = SearchParams


def keep_top_beams(num_beams: int, expansions: int) -> SelectRule:
    """The ``num_beams`` best live nodes of each group get ``expansions`` children (finished ones 1);
    ties go to the lowest slot."""

    def select(scores, live, done, params):
        best, index = lax.top_k(scores, min(num_beams, scores.shape[-1]))
        children = jnp.where(jnp.take_along_axis(done, index, axis=-1), 1, expansions)
        children = jnp.where(best > -jnp.inf, children, 0).astype(jnp.int32)
        return jnp.put_along_axis(jnp.zeros(scores.shape, jnp.int32), index, children, axis=-1, inplace=False)

    return select


def keep_best_child(scores, live, done, params):
    """In each group, the best live node (lowest slot on ties) gets all the group's slots (one if
    finished); a group without a live node gets none."""
    slots = scores.shape[-1]
    best = jnp.argmax(scores, axis=-1)
    found = jnp.max(scores, axis=-1) > -jnp.inf
    finished = jnp.take_along_axis(done, best[..., None], axis=-1)[..., 0]
    children = jnp.where(found, jnp.where(finished, 1, slots), 0)
    return jax.nn.one_hot(best, slots, dtype=jnp.int32) * children[..., None].astype(jnp.int32)


def balance_children(scores, live, done, params):
    """One slot per finished node; the rest in proportion to softmax(r / T) of the open nodes
    (T = ``params.reward_temperature``)."""
    complete = live & done
    open_ = live & ~done
    budget = scores.shape[-1] - jnp.sum(complete, axis=-1)
    temperature = jnp.asarray(params.reward_temperature, scores.dtype)
    logits = jnp.where(open_, scores / temperature, -jnp.inf)
    return jnp.where(complete, 1, apportion(logits, budget))


def beam(expansions: int) -> TreeRule:
    """Beam search: width // ``expansions`` beams of ``expansions`` children, one global top-N."""
    expansions = checks.positive_int("expansions", expansions)

    def select(scores, live, done, params):
        return keep_top_beams(scores.shape[-1] // expansions, expansions)(scores, live, done, params)

    return TreeRule(select, expansions, "beam")


def subtrees(subtree_width: int) -> TreeRule:
    """DVTS: independent subtrees of ``subtree_width`` slots, greedy within each."""
    subtree_width = checks.positive_int("subtree_width", subtree_width)
    return TreeRule(keep_best_child, subtree_width, "subtree", independent_groups=True)


def balanced(reward_temperature: float) -> TreeRule:
    """REBASE with the default temperature ``reward_temperature`` > 0 (``params.reward_temperature``)."""
    checks.in_range("reward_temperature", reward_temperature, 0.0, float("inf"), inclusive=False)
    return TreeRule(balance_children, make_params=lambda base_params: RebaseParams(base_params, reward_temperature))


def _search(sampler, reward_fn, rule: TreeRule, nfe_budget, nfe_per_step, preview) -> Sampler:
    return tree_search(sampler, reward_fn, rule.select, nfe_budget=nfe_budget, nfe_per_step=nfe_per_step,
                       group_width=rule.group_width, group_name=rule.group_name,
                       independent_groups=rule.independent_groups, preview=preview, make_params=rule.make_params)


@takes_models
def beam_search(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, expansions: int = 4,
                nfe_per_step: int | None = None, preview: Callable | None = None) -> Sampler:
    """Beam search over the steps of ``sampler``: ``nfe_budget // (num_steps · nfe_per_step · expansions)``
    beams of ``expansions`` children per step. Output: :class:`itscale.search.SearchOutput`
    (``split.width`` = beams × expansions); ``params`` = ``SearchParams(base)``. Other arguments:
    :func:`itscale.search.tree.tree_search`."""
    return _search(sampler, reward_fn, beam(expansions), nfe_budget, nfe_per_step, preview)


@takes_models
def dvts(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, subtree_width: int = 4,
         nfe_per_step: int | None = None, preview: Callable | None = None) -> Sampler:
    """DVTS over the steps of ``sampler``: ``nfe_budget // (num_steps · nfe_per_step · subtree_width)``
    subtrees of ``subtree_width`` children per step; the output keeps one node per subtree (the first
    slot of its block). ``params`` = ``SearchParams(base)``. Other arguments:
    :func:`itscale.search.tree.tree_search`."""
    return _search(sampler, reward_fn, subtrees(subtree_width), nfe_budget, nfe_per_step, preview)


@takes_models
def rebase(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, reward_temperature: float = 1.0,
           nfe_per_step: int | None = None, preview: Callable | None = None) -> Sampler:
    """REBASE over the steps of ``sampler`` with the width ``nfe_budget // (num_steps · nfe_per_step)``.
    ``params`` = ``RebaseParams(base, reward_temperature)``. Other arguments:
    :func:`itscale.search.tree.tree_search`."""
    return _search(sampler, reward_fn, balanced(reward_temperature), nfe_budget, nfe_per_step, preview)
