"""DVTS, diverse verifier tree search (Beeching, Tunstall & Rush 2024, "Scaling test-time compute with
open models", Hugging Face blog; search-and-learn ``dvts``).

The width is split into ``width / M`` independent subtrees of beam width M. In each subtree the one
current node is expanded into M children per reasoning step and the PRM's best child becomes the next
node (greedy within the subtree, no competition between subtrees, hence diversity). A finished node
keeps one slot. The output keeps one node per subtree; ``best`` is the verifier's choice among them
(vote over ``candidates`` with :func:`itscale.tokens.search.candidate_answers` for the weighted
answer). Engine, budget and output: :mod:`itscale.tokens.search.tree`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.tokens.search.tree import tree_search
from itscale.core.weights import takes_models


def keep_best_child(scores, live, done, params):
    """Selection rule: in each group, the best live node (lowest slot on ties) gets all the group's
    slots (one if finished); a group without a live node gets none."""
    slots = scores.shape[-1]
    best = jnp.argmax(scores, axis=-1)
    found = jnp.max(scores, axis=-1) > -jnp.inf
    finished = jnp.take_along_axis(done, best[..., None], axis=-1)[..., 0]
    children = jnp.where(found, jnp.where(finished, 1, slots), 0)
    return jax.nn.one_hot(best, slots, dtype=jnp.int32) * children[..., None].astype(jnp.int32)


@takes_models
def dvts(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int, step_length: int,
         subtree_width: int = 4, separator_id: int | None = None, **rollout_options) -> Sampler:
    """DVTS with ``nfe_budget // (num_steps · step_length · subtree_width)`` subtrees (after the prompt)
    of ``subtree_width`` children per step.

    Output: :class:`itscale.tokens.search.SearchOutput` with candidates in ``split.num_groups`` blocks
    of ``subtree_width`` slots, the first slot of each block its subtree's final node;
    ``params`` = ``SearchParams(base=decoding params)``. Other arguments:
    :func:`itscale.tokens.search.tree_search`.
    """
    subtree_width = checks.positive_int("subtree_width", subtree_width)
    return tree_search(logits_fn, reward_fn, keep_best_child, nfe_budget=nfe_budget, num_steps=num_steps,
                       step_length=step_length, group_width=subtree_width, group_name="subtree",
                       independent_groups=True, separator_id=separator_id, **rollout_options)
