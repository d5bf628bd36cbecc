"""Turning an NFE budget into a width: how many candidates / particles a budget buys.

Every width strategy spends ``width × nfe_per_candidate`` network evaluations, where one candidate costs
``nfe_per_candidate`` NFE (e.g. ``num_steps × nfe_per_step`` for a refine sampler, ``prompt_len +
new_tokens`` for a rollout). :func:`split_budget` returns the largest width the budget affords and
the split it implies, so a strategy reports how it spent the budget; the run's ``stats.nfe`` is the
measured total.
"""

from __future__ import annotations

from typing import NamedTuple

from itscale.core import checks


class BudgetSplit(NamedTuple):
    """``width`` candidates of ``nfe_per_candidate`` NFE each: ``nfe = width × nfe_per_candidate``
    (at most the budget; ``unused`` = budget − nfe)."""

    width: int
    nfe_per_candidate: int
    nfe: int
    unused: int


def split_budget(nfe_budget: int, *, nfe_per_candidate: int) -> BudgetSplit:
    """Largest ``width`` with ``width × nfe_per_candidate <= nfe_budget``; ``ValueError`` if below 1."""
    budget = checks.positive_int("nfe_budget", nfe_budget)
    per = checks.positive_int("nfe_per_candidate", nfe_per_candidate)
    width = budget // per
    if width < 1:
        raise ValueError(f"nfe_budget={budget} is too small: one candidate costs nfe_per_candidate={per} "
                         f"NFE; "
                         f"give a budget of at least {per}")
    return BudgetSplit(width, per, width * per, budget - width * per)
