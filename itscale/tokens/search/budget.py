"""How a token search spends a static NFE budget: the split width × steps × step length (× rounds).

Every LM search here shares the prompt's prefill among its rows (one model call on the P prompt
tokens per query, NFE = P) and then grows ``width`` rows by ``num_steps`` reasoning steps of at most
``step_length`` tokens, one model call on every row per token iteration (finished or waiting rows
included: static shapes). So a query costs at most

    nfe_bound = P + width × num_steps × step_length        (one round; fewer if every row stops early)

and :func:`plan_search` picks the largest ``width`` (a multiple of the strategy's group: beam
expansions, DVTS subtree width) with ``nfe_bound <= nfe_budget``. The run's ``stats.nfe_per_sample``
is the measured cost per query (at most ``nfe_bound``); the split (:class:`itscale.search.SearchSplit`,
with ``nfe_per_step`` = ``step_length``) is reported in every output.
"""

from __future__ import annotations

from itscale.core import checks
from itscale.search.split import SearchSplit, plan_width


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
    prompt_len = checks.positive_int("prompt_len", prompt_len)
    return plan_width(nfe_budget, num_steps=num_steps, nfe_per_step=step_length, prompt_tokens=prompt_len,
                      group_width=group_width, group_name=group_name)
