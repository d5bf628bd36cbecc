"""How a width strategy spends a static NFE budget: one split, width × steps × NFE per step × rounds.

Every search strategy of itscale, continuous or token, takes its budget as a static total number of
network evaluations per query and turns it into a plan before any compute. A query costs at most

    nfe_bound = prompt_tokens + width × (row_init + num_steps × nfe_per_step × rounds)

where ``prompt_tokens`` is a prefix evaluated once per query and shared by every row (an LM prompt's
prefill; 0 for a refinement sampler), ``width`` the rows grown in parallel (candidates, particles,
beams × expansions, K children per particle), ``row_init`` what the base sampler's ``init`` spends on
each row (a rollout's prompt prefill when every candidate prefills its own copy; 0 for a refinement
sampler; :func:`init_nfe_per_row`), ``num_steps`` the base sampler's steps, ``nfe_per_step`` the most
evaluations one step makes per row (``Sampler.nfe_per_step``: a Runge–Kutta solver's stages, a token
step's length) and ``rounds`` sequential repetitions over the same rows (search over paths).
:func:`plan_width` picks the largest ``width`` (a multiple of ``group_width``) with
``nfe_bound <= nfe_budget``; every output reports the split and the run's ``stats.nfe`` is the
measured cost (at most ``nfe_bound`` per query).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state


class SearchSplit(NamedTuple):
    """The split of a per-query NFE budget (Python ints when planned, int32 arrays in outputs).

    nfe_budget: the declared budget per query. nfe_bound: the most the search can spend (<= budget;
    see the module docstring). prompt_tokens: the shared prefix's NFE (0 for refinement samplers).
    width: rows grown in parallel = num_groups × group_width. num_steps: the base sampler's steps.
    nfe_per_step: most NFE of one step per row. rounds: sequential searches over the same rows.
    row_init: NFE of the base sampler's ``init`` per row (0 where a strategy does not measure it).
    """

    nfe_budget: int
    nfe_bound: int
    prompt_tokens: int
    width: int
    num_groups: int
    group_width: int
    num_steps: int
    nfe_per_step: int
    rounds: int
    row_init: int = 0

    def as_arrays(self) -> "SearchSplit":
        """The same split as int32 arrays (for outputs of jitted runs)."""
        return jax.tree.map(lambda v: jnp.asarray(v, jnp.int32), self)


def plan_width(nfe_budget: int, *, num_steps: int, nfe_per_step: int, rounds: int = 1,
               prompt_tokens: int = 0, row_init: int = 0, group_width: int = 1,
               group_name: str = "candidate") -> SearchSplit:
    """Largest width (a multiple of ``group_width``) whose ``nfe_bound`` fits ``nfe_budget``.

    Raises ``ValueError`` naming ``nfe_budget`` and the smallest budget that buys one group.
    """
    budget = checks.positive_int("nfe_budget", nfe_budget)
    num_steps = checks.positive_int("num_steps", num_steps)
    nfe_per_step = checks.positive_int("nfe_per_step", nfe_per_step)
    rounds = checks.positive_int("rounds", rounds)
    group_width = checks.positive_int("group_width", group_width)
    for name, value in (("prompt_tokens", prompt_tokens), ("row_init", row_init)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    per_row = row_init + num_steps * nfe_per_step * rounds
    num_groups = max(budget - prompt_tokens, 0) // (per_row * group_width)
    if num_groups < 1:
        need = prompt_tokens + group_width * per_row
        prefix = f"the prompt prefill costs {prompt_tokens} NFE and " if prompt_tokens else ""
        init = f"{row_init} NFE of the sampler's init and " if row_init else ""
        raise ValueError(
            f"nfe_budget={budget} is too small: {prefix}one {group_name} of {group_width} row(s) over "
            f"{init}num_steps={num_steps} steps of up to nfe_per_step={nfe_per_step} NFE"
            f"{f' for rounds={rounds} rounds' if rounds > 1 else ''} costs {group_width * per_row}; "
            f"give nfe_budget >= {need}")
    width = num_groups * group_width
    return SearchSplit(budget, prompt_tokens + width * per_row, prompt_tokens, width, num_groups, group_width,
                       num_steps, nfe_per_step, rounds, row_init)


def fixed_split(width: int, *, num_steps: int, nfe_per_step: int, group_width: int = 1,
                row_init: int = 0) -> SearchSplit:
    """The split of a fixed width (no budget to plan from): its bound is also its budget."""
    bound = width * (row_init + num_steps * nfe_per_step)
    return SearchSplit(bound, bound, 0, width, width // group_width, group_width, num_steps, nfe_per_step, 1,
                       row_init)


def init_nfe_per_row(sampler: Sampler, key, x, params, ctx) -> int:
    """NFE that ``sampler.init`` spends per row of ``x`` (a token rollout's prompt prefill), read from an
    abstract trace of it (:func:`itscale.core.counting.static_cost`); 0 when its cost is not static
    (then ``stats.nfe`` alone measures it)."""
    total = counting.static_cost(lambda k, rows: init_state(sampler, k, rows, params, ctx), key, x)
    return 0 if not total else total // jnp.shape(jax.tree.leaves(x)[0])[0]


def declared_nfe_per_step(sampler: Sampler, nfe_per_step: int | None = None) -> int:
    """The NFE per step and row a budget is planned with: ``nfe_per_step`` if given, else the
    sampler's declared ``Sampler.nfe_per_step``; ``ValueError`` if neither says."""
    if nfe_per_step is not None:
        return checks.positive_int("nfe_per_step", nfe_per_step)
    if sampler.nfe_per_step is None:
        raise ValueError("the sampler does not declare its NFE per step (Sampler.nfe_per_step is None); pass "
                         "nfe_per_step=<most network evaluations of one step per row> to plan the budget")
    return checks.positive_int("sampler.nfe_per_step", sampler.nfe_per_step)
