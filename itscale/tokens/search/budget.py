"""How a token search spends a static NFE budget: the split width × steps × step length (× rounds).

Every LM search here shares the prompt's prefill among its rows (one model call on the P prompt
tokens per query, NFE = P) and then grows ``width`` rows by ``num_steps`` reasoning steps of at most
``step_length`` tokens, one model call on every row per token iteration (finished or waiting rows
included: static shapes). So a query costs at most

    nfe_bound = P + width × num_steps × step_length        (one round; fewer if every row stops early)

and :func:`plan_search` picks the largest ``width`` (a multiple of the strategy's group: beam
expansions, DVTS subtree width) with ``nfe_bound <= nfe_budget``. The run's ``stats.nfe_per_sample``
is the measured cost per query (at most ``nfe_bound``); the split is reported in every output.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks


class SearchSplit(NamedTuple):
    """The split of a per-query NFE budget (Python ints when planned, int32 arrays in outputs).

    nfe_budget: the declared budget per query. nfe_bound: prompt_tokens + width × num_steps ×
    step_length × rounds, the most the search can spend (<= nfe_budget). prompt_tokens: P, the shared
    prefill. width: rows grown in parallel = num_groups × group_width (beams × expansions, subtrees ×
    subtree width, particles). num_steps, step_length: reasoning steps and their token cap.
    rounds: sequential searches over the same rows (1 for every strategy here).
    """

    nfe_budget: int
    nfe_bound: int
    prompt_tokens: int
    width: int
    num_groups: int
    group_width: int
    num_steps: int
    step_length: int
    rounds: int

    def as_arrays(self) -> "SearchSplit":
        """The same split as int32 arrays (for outputs of jitted runs)."""
        return jax.tree.map(lambda v: jnp.asarray(v, jnp.int32), self)


def check_budget(nfe_budget, *, num_steps, step_length, group_width: int = 1,
                 group_name: str = "group") -> tuple[int, int, int]:
    """Checks that need no prompt: positive ints, and a budget that affords one group after a
    one-token prompt. Returns ``(nfe_budget, num_steps, step_length)`` as ints."""
    budget = checks.positive_int("nfe_budget", nfe_budget)
    num_steps = checks.positive_int("num_steps", num_steps)
    step_length = checks.positive_int("step_length", step_length)
    plan_search(budget, prompt_len=1, num_steps=num_steps, step_length=step_length,
                group_width=group_width, group_name=group_name)
    return budget, num_steps, step_length


def plan_search(nfe_budget: int, *, prompt_len: int, num_steps: int, step_length: int,
                group_width: int = 1, group_name: str = "group") -> SearchSplit:
    """Largest width (a multiple of ``group_width``) whose ``nfe_bound`` fits ``nfe_budget``.

    Raises ``ValueError`` naming ``nfe_budget`` and the smallest budget that buys one group.
    """
    budget = checks.positive_int("nfe_budget", nfe_budget)
    prompt_len = checks.positive_int("prompt_len", prompt_len)
    num_steps = checks.positive_int("num_steps", num_steps)
    step_length = checks.positive_int("step_length", step_length)
    group_width = checks.positive_int("group_width", group_width)
    per_row = num_steps * step_length
    num_groups = max(budget - prompt_len, 0) // (per_row * group_width)
    if num_groups < 1:
        need = prompt_len + group_width * per_row
        raise ValueError(
            f"nfe_budget={budget} is too small: the prompt prefill costs {prompt_len} NFE and one "
            f"{group_name} of {group_width} row(s) over num_steps={num_steps} steps of up to "
            f"step_length={step_length} tokens costs {group_width * per_row}; give nfe_budget >= {need}")
    width = num_groups * group_width
    return SearchSplit(budget, prompt_len + width * per_row, prompt_len, width, num_groups, group_width,
                       num_steps, step_length, 1)
