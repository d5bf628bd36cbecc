"""``scheduled_smc(sampler, reward_fn, schedule=... | nfe_budget=...)``: SMC with fewer particles as t → 0.

FK steering (:func:`itscale.search.smc`) spends N particles on every step. Early steps (near noise,
t ≈ 1) are where particles are diverse and the potentials still reshape the population; late steps
(t → 0) mostly move particles that resampling has already chosen. A *particle-count schedule* spends
a fixed NFE budget accordingly: a static tuple of phases ``((steps_1, N_1), (steps_2, N_2), ...)`` with
N_1 ≥ N_2 ≥ ..., phase k running ``steps_k`` base steps of SMC on N_k particles. It costs

    nfe_bound = Σ_k N_k · steps_k · nfe_per_step

NFE (exactly, for a base sampler with a fixed cost per step). Between phases the population is
resampled from N_k down to N_{k+1}: N_{k+1} ancestors are drawn from the normalised weights with the
chosen resampler (``resample``, for N_{k+1} draws), every base-state and potential leaf is gathered
with them, and every log-weight is set to log mean W. Since E[#copies of i] = N_{k+1} w_i, the
estimate log Ẑ = log mean W_final stays unbiased for Z = E_p[exp(λ r(x_0))] (Del Moral 2004), as
for a resampling within :func:`~itscale.search.smc`. ESS-triggered resampling is switched off at the
step that ends a phase (the forced one replaces it). Typed PRNG-key leaves of the base state (random
streams) belong to slots: the first N_{k+1} slots keep theirs, so copies draw fresh randomness.
This is SMC with a time-varying population size, as in the adaptive particle filters of Fox (2003,
"Adapting the sample size in particle filters through KLD-sampling") and Elvira, Míguez & Djurić
(2017, "Adapting the number of particles in sequential Monte Carlo methods through an online scheme
for convergence assessment"), here on a static schedule, applied to FK steering (Singhal et al.
2025, arXiv 2501.06848).

Design: shapes are static, so each phase keeps its own SMC state (N_k rows) in a tuple, as
:func:`itscale.chain` does; the run has one step per base step (``num_steps = Σ steps_k``, the base
sampler's own grid: it sees ``StepContext(step, Σ steps_k)``), and the step index selects the phase
through :func:`itscale.core.counting.switch`, which runs (and counts) only the active phase. Compute
is therefore proportional to the schedule (memory holds Σ N_k rows); the keys are those of
:func:`~itscale.search.smc` step for step, so a one-phase schedule *is* ``smc`` (same key, same
particles, same log Ẑ). Consecutive phases with equal N are merged (no forced resampling between them).

Budget: either an explicit ``schedule``, or ``nfe_budget`` with the total ``num_steps`` and a rule
(:func:`plan_particle_schedule`): ``num_phases`` phases of near-equal length, N_k = max(1,
⌊N_1 · decay^(k−1)⌋), with the largest N_1 whose ``nfe_bound`` fits the budget. ``x`` must lead with
N_1 (the first phase's particles), as ``smc``'s ``x`` leads with its N. The output is that of
:func:`~itscale.search.smc_output` for the last phase's N_P particles (P phases); ``output.split`` reports
the budget, the bound, ``width`` = N_P (the output's particles) and ``num_steps``, and ``output.info``
adds ``particles_per_phase`` and ``steps_per_phase``. ``info["num_resamples"]`` counts the
ESS-triggered resamplings only (the P − 1 phase changes always resample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state
from itscale.core.weights import takes_models
from itscale.search import resampling
from itscale.search.smc import SMCParams, _log_weights, _store, check_params, smc, smc_output
from itscale.search.split import SearchSplit, declared_nfe_per_step

_SHRINK_STREAM = 0x5C4ED  # fold-in constant: the phase change's resampling key (ESS resampling uses 0x5EED)

Schedule = tuple[tuple[int, int], ...]


def check_schedule(schedule) -> Schedule:
    """``schedule`` as a tuple of ``(num_steps, num_particles)`` int pairs, N non-increasing, with
    consecutive phases of equal N merged; ``ValueError`` naming ``schedule`` otherwise."""
    try:
        phases = [tuple(phase) for phase in schedule]
    except TypeError as error:
        raise ValueError(f"schedule must be a sequence of (num_steps, num_particles) pairs, got "
                         f"{schedule!r}") from error
    if not phases or any(len(phase) != 2 for phase in phases):
        raise ValueError(f"schedule must be a non-empty sequence of (num_steps, num_particles) pairs, got "
                         f"{schedule!r}")
    merged: list[list[int]] = []
    for i, (steps, n) in enumerate(phases):
        steps = checks.positive_int(f"schedule[{i}] num_steps", steps)
        n = checks.positive_int(f"schedule[{i}] num_particles", n)
        if merged and n > merged[-1][1]:
            raise ValueError(f"schedule: particle counts must not increase from one phase to the next, got "
                             f"{merged[-1][1]} then {n} in {schedule!r}")
        if merged and n == merged[-1][1]:
            merged[-1][0] += steps
        else:
            merged.append([steps, n])
    return tuple((steps, n) for steps, n in merged)


def schedule_nfe(schedule, nfe_per_step: int = 1) -> int:
    """Σ_k N_k · steps_k · nfe_per_step: the NFE of a run of ``schedule``."""
    per = checks.positive_int("nfe_per_step", nfe_per_step)
    return sum(steps * n * per for steps, n in check_schedule(schedule))


def _phase_lengths(num_steps: int, num_phases: int) -> list[int]:
    """``num_steps`` cut into ``num_phases`` near-equal parts, the earlier ones longer by one step."""
    base, extra = divmod(num_steps, num_phases)
    return [base + (k < extra) for k in range(num_phases)]


def _geometric(first: int, lengths, decay: float) -> Schedule:
    """N_k = max(1, ⌊first · decay^k⌋) over phases of ``lengths`` steps (equal counts merged)."""
    return check_schedule((steps, max(1, int(np.floor(first * decay**k)))) for k, steps in enumerate(lengths))


def plan_particle_schedule(nfe_budget: int, *, num_steps: int, nfe_per_step: int = 1, decay: float = 0.5,
                           num_phases: int | None = None) -> Schedule:
    """The geometric schedule of largest N_1 that fits ``nfe_budget`` (see the module docstring).

    ``num_phases`` (default min(4, num_steps)) phases of near-equal length over ``num_steps`` steps
    (earlier phases longer by one when they do not divide evenly), N_k = max(1, ⌊N_1 · decay^(k−1)⌋),
    ``decay`` in (0, 1] (1: one constant phase, the width of :func:`itscale.search.plan_width`).
    Raises ``ValueError`` naming ``nfe_budget`` and the minimum, ``num_steps · nfe_per_step`` (one
    particle throughout).
    """
    budget = checks.positive_int("nfe_budget", nfe_budget)
    num_steps = checks.positive_int("num_steps", num_steps)
    per = checks.positive_int("nfe_per_step", nfe_per_step)
    decay = checks.in_range("decay", decay, 0.0, 1.0)
    if decay == 0.0:
        raise ValueError("decay must lie in (0, 1] (the ratio N_{k+1} / N_k), got 0")
    num_phases = min(4, num_steps) if num_phases is None else checks.positive_int("num_phases", num_phases)
    if num_phases > num_steps:
        raise ValueError(f"num_phases must be at most num_steps={num_steps} (each phase runs a step), got "
                         f"{num_phases}")
    lengths = _phase_lengths(num_steps, num_phases)
    if num_steps * per > budget:
        raise ValueError(f"nfe_budget={budget} is too small: one particle over num_steps={num_steps} steps "
                         f"of up to nfe_per_step={per} NFE costs {num_steps * per}; give nfe_budget >= "
                         f"{num_steps * per}")
    low, high = 1, budget // (lengths[0] * per)          # the cost is non-decreasing in N_1
    while low < high:
        mid = (low + high + 1) // 2
        if schedule_nfe(_geometric(mid, lengths, decay), per) <= budget:
            low = mid
        else:
            high = mid - 1
    return _geometric(low, lengths, decay)


def _resolve(sampler, schedule, nfe_budget, num_steps, decay, num_phases, nfe_per_step):
    """The checked schedule, its NFE per step and its split (budget = bound without a budget)."""
    if schedule is None and nfe_budget is None:
        raise ValueError("give a schedule ((num_steps, num_particles), ...) or an nfe_budget (with "
                         "num_steps)")
    if schedule is None:
        if num_steps is None:
            raise ValueError("nfe_budget needs num_steps, the base sampler's total number of steps, to plan "
                             "the schedule")
        per = declared_nfe_per_step(sampler, nfe_per_step)
        schedule = plan_particle_schedule(nfe_budget, num_steps=num_steps, nfe_per_step=per, decay=decay,
                                          num_phases=num_phases)
    else:
        schedule = check_schedule(schedule)
        per = (declared_nfe_per_step(sampler, nfe_per_step) if nfe_budget is not None
               else nfe_per_step or sampler.nfe_per_step or 1)
    total = sum(steps for steps, _ in schedule)
    if num_steps is not None and checks.positive_int("num_steps", num_steps) != total:
        raise ValueError(f"num_steps={num_steps} differs from the schedule's total number of steps {total} "
                         f"in {schedule}")
    bound = schedule_nfe(schedule, per)
    budget = bound if nfe_budget is None else checks.positive_int("nfe_budget", nfe_budget)
    if bound > budget:
        raise ValueError(f"nfe_budget={budget} is too small for the schedule {schedule}, which costs "
                         f"Σ N·steps·nfe_per_step = {bound} NFE (nfe_per_step={per}); give nfe_budget >= "
                         f"{bound}")
    width = schedule[-1][1]
    return schedule, SearchSplit(budget, bound, 0, width, 1, width, total, per, 1)


def shrink(key, state, num_particles: int, draw_ancestors: Callable):
    """An SMC state (:class:`itscale.search.SMCState`) of N particles resampled to ``num_particles`` <= N:
    ancestors drawn from the normalised weights, every base and potential leaf gathered (typed PRNG-key
    leaves keep the first ``num_particles`` slots' streams), every log-weight set to log mean W."""
    log_weights = _log_weights(state)
    log_mean = resampling.log_mean_exp(log_weights)
    ancestors = draw_ancestors(key, log_weights, num_particles)

    def take(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return leaf[:num_particles]
        return leaf.at[ancestors].get(mode="promise_in_bounds")

    base, potential = jax.tree.map(take, (state.base, state.potential))
    log_weights = jnp.full((num_particles,), log_mean, log_weights.dtype)
    return state._replace(base=base, log_weights=_store(log_weights), alive=log_weights > -jnp.inf,
                          potential=potential)


@takes_models
def scheduled_smc(sampler: Sampler, reward_fn: Callable, *, schedule=None, nfe_budget: int | None = None,
                  num_steps: int | None = None, decay: float = 0.5, num_phases: int | None = None,
                  nfe_per_step: int | None = None, potential: str = "difference",
                  resample: str = "systematic", ess_threshold: float = 0.5, lam: float = 1.0,
                  preview: Callable[[Any, Any], Any] | None = None) -> Sampler:
    """SMC / FK steering of ``sampler`` towards exp(λ·reward) with a particle-count schedule; see the
    module docstring. Run on ``x`` leading with N_1 with ``num_steps = Σ steps_k``.

    Args:
      sampler, reward_fn, potential, resample, ess_threshold, lam, preview: as for :func:`itscale.search.smc`
        (the same ``params``: :class:`itscale.search.SMCParams`).
      schedule: static ``((steps_1, N_1), (steps_2, N_2), ...)``, N non-increasing; or None to plan one.
      nfe_budget: static NFE budget per query; plans the schedule (:func:`plan_particle_schedule`) when
        ``schedule`` is None, else checks that the schedule fits it.
      num_steps: total base steps; required with ``nfe_budget`` alone, else checked against the schedule.
      decay, num_phases: the planning rule (ratio N_{k+1} / N_k in (0, 1], number of phases).
      nfe_per_step: NFE of one base step per row (default: ``sampler.nfe_per_step``).
    """
    checks.sampler("sampler", sampler)
    schedule, split = _resolve(sampler, schedule, nfe_budget, num_steps, decay, num_phases, nfe_per_step)
    phases = [smc(sampler, reward_fn, num_particles=n, potential=potential, resample=resample,
                  ess_threshold=ess_threshold, lam=lam, preview=preview) for _, n in schedule]
    draw_ancestors = resampling.resampler(resample)
    ends = np.cumsum([steps for steps, _ in schedule]).astype(np.int32)
    total, last = int(ends[-1]), len(schedule) - 1
    sizes = [n for _, n in schedule]

    def check_length(ctx):
        if ctx is not None and ctx.num_steps != total:
            raise ValueError(f"this schedule {schedule} has {total} steps; run it with num_steps={total}, "
                             f"got {ctx.num_steps}")

    def init(key, x, params, ctx=None):
        check_length(ctx)
        for leaf in jax.tree.leaves(x):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != sizes[0]:
                raise ValueError(f"x must lead with the first phase's {sizes[0]} particles (schedule "
                                 f"{schedule}), got a leaf of shape {jnp.shape(leaf)}")
        states = [init_state(phases[0], key, x, params, ctx)]
        for n in sizes[1:]:
            shape = counting.eval_shape(lambda s, n=n: shrink(key, s, n, draw_ancestors), states[-1])
            states.append(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shape))
        return tuple(states)

    def phase_branch(k, key, ctx, params):
        ends_phase = ctx.step == ends[k] - 1

        def branch(states):
            phase_params = params
            if k < last:   # the phase change resamples at this step: no ESS-triggered resampling too
                phase_params = params._replace(ess_threshold=jnp.where(ends_phase, 0.0, params.ess_threshold))
            state, info = phases[k].step(key, states[k], ctx, phase_params)
            info = {name: info[name] for name in ("ess", "resampled", "all_impossible", "log_normalizer")}
            info["phase_change"] = ends_phase & (k < last)
            if k == last:
                return states[:k] + (state,), info
            following = counting.cond(
                ends_phase, lambda s, _: shrink(jax.random.fold_in(key, _SHRINK_STREAM), s, sizes[k + 1],
                                                draw_ancestors),
                lambda _, following: following, state, states[k + 1])
            return states[:k] + (state, following) + states[k + 2:], info

        return branch

    def step(key, states, ctx, params):
        check_length(ctx)
        phase = jnp.searchsorted(jnp.asarray(ends), ctx.step, side="right").astype(jnp.int32)
        branches = [phase_branch(k, key, ctx, params) for k in range(len(schedule))]
        states, info = counting.switch(phase, branches, states)
        return states, {**info, "phase": phase}

    def finalize(states):
        state = states[-1]
        out = smc_output(sampler.finalize(state.base), _log_weights(state), state.potential.log_potential,
                         split=split, num_resamples=state.num_resamples,
                         ever_all_impossible=state.ever_all_impossible, invalid_rewards=state.invalid_rewards)
        return out._replace(info={**out.info, "particles_per_phase": jnp.asarray(sizes, jnp.int32),
                                  "steps_per_phase": jnp.asarray([s for s, _ in schedule], jnp.int32)})

    watch = None
    if sampler.watch is not None:
        def watch(states):
            return tuple(phase.watch(state) for phase, state in zip(phases, states))

    return Sampler(init, step, finalize, SMCParams(sampler.params, lam, ess_threshold), watch, sampler.prior,
                   check_params(sampler), nfe_per_step=sampler.nfe_per_step)
