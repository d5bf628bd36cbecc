"""``smc(sampler, reward_fn, num_particles=N)``: Feynman–Kac steering / SMC over any sampler.

Targets p(x_0) exp(λ r(x_0)) / Z, where p is the law of the base sampler's output, and estimates
log Z = log E_p[exp(λ r(x_0))] (Singhal et al. 2025, FK steering, arXiv 2501.06848; Wu et al. 2023,
twisted diffusion sampler, arXiv 2306.17775; Del Moral 2004 for the estimator). Generic over every
base sampler whose state leaves all lead with the particle/batch axis: refine (ODE/SDE) samplers
and token rollouts alike. Run it on ``x`` of shape ``(num_particles, ...)``.

One step, for particles with log-weights log W (steps run from noise t = T to data t = 0):

1. ``state', info = sampler.step(key, state, ctx)``: the base model's own transition is the proposal,
   so log p(x_t | x_{t+1}) − log q(x_t | x_{t+1}) = 0 and only potentials enter the weights.
2. r = reward_fn(preview(state', info)). The default preview is ``info["x0_hat"]`` when the step
   reports one: the model's denoised estimate at the *pre*-step state, so the potential is that of
   the pre-step particle ("lagged"). Weighting and resampling the (pre, post) pairs by the pre-step
   potential is the same as resample-then-move, because the move did not look at the weights.
   Without ``x0_hat`` the default is ``sampler.finalize(state')`` (e.g. the tokens so far). At the
   last step (``ctx.step == ctx.num_steps - 1``) the preview is always ``finalize(state')`` = x_0,
   so the potentials telescope to exp(λ r(x_0)) (see :mod:`itscale.search.potentials`).
3. log W += Ψ_t − Ψ_{t+1} (incremental log-weight of the chosen potential).
4. If ESS(W) < ``ess_threshold`` · N (and this is not the last step): draw ancestors with the chosen
   resampler, resample every leaf of the base state and of the potential state along axis 0 (in
   place: only the slots of particles without offspring are overwritten, see
   :mod:`itscale.search.in_place`), and set every log W to log mean W. Hence
   log Ẑ = Σ_{resampling times} log mean W + log mean W_final = log mean W_final, which is unbiased
   for Z (Del Moral 2004).

``ess_threshold`` = 0 never resamples (importance sampling), 1 resamples after every step but the
last. ``lam`` and ``ess_threshold`` live in ``params`` (traced: new values never recompile).
``reward_fn`` maps a batch to rewards of shape (N,); it is counted as a verifier (N calls per step).
A NaN or +inf reward is an invalid verdict: it is counted and the particle made impossible (−inf).
If every weight becomes −inf, resampling falls back to uniform, log Ẑ = −inf, nothing is NaN, and
``output.info["all_impossible"]`` reports it.

Output: :class:`itscale.search.SearchOutput` (:func:`smc_output`): ``particles`` (= ``candidates``),
normalised ``log_weights``, ``log_normalizer`` (log Ẑ), ``scores`` = λ·r(x_0) per particle with
``best`` the highest, ``split`` (N × steps × NFE per step), and ``info`` (ess, num_resamples,
all_impossible, ever_all_impossible). A batch of queries is ``its.particles(smc(...), Q)`` on ``x`` of
shape (Q, N, ...): every output field gains the leading query axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, validate, watch_within
from itscale.search import potentials, resampling
from itscale.search.in_place import resample_in_place
from itscale.search.output import SearchOutput, is_invalid, search_output
from itscale.search.preview import preview_scores
from itscale.search.split import SearchSplit, fixed_split, init_nfe_per_row
from itscale.core.weights import takes_models

_RESAMPLE_STREAM = 0x5EED  # fold-in constant: resampling key, distinct from the base step's key


class SMCParams(NamedTuple):
    """Traced hyper-parameters: the base sampler's ``params``, λ and the ESS/N threshold."""

    base: Any
    lam: Any = 1.0
    ess_threshold: Any = 0.5


class SMCState(NamedTuple):
    """Base state and particle weights, stored without infinities so that ``stats.nonfinite`` of
    ``its.run`` only counts real faults: ``alive`` is False for impossible particles (weight 0), whose
    stored log-weight and potential values are placeholders (0).

    potential: each particle's reward history (:class:`itscale.search.potentials.PotentialState`).
    split: the run's N × steps × NFE per step (:class:`itscale.search.SearchSplit`, int32 arrays).
    """

    base: Any
    log_weights: jax.Array
    alive: jax.Array
    potential: potentials.PotentialState
    num_resamples: jax.Array
    ever_all_impossible: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit | None


def _store(values):
    """−inf -> 0 (placeholders of impossible particles); NaN and +inf are kept, to be counted."""
    return jnp.where(values == -jnp.inf, jnp.zeros_like(values), values)


def _log_weights(state: SMCState) -> jax.Array:
    return jnp.where(state.alive, state.log_weights, -jnp.inf)


def resample_step(key, tree, log_weights, ess_threshold, is_last, draw_ancestors):
    """ESS-triggered resampling shared by the SMC samplers: if ESS(W) < ``ess_threshold`` · N (or the
    threshold is >= 1) and ``is_last`` is False, draw ancestors with ``draw_ancestors`` from a key folded
    out of the step's ``key``, resample every leaf of ``tree`` in place and set every log W to log mean W.

    Returns ``(tree, log_weights, ess, log_mean, resampled)``; ``ess`` and ``log_mean`` are those of the
    weights before resampling (resampling keeps the mean).
    """
    n = log_weights.shape[0]
    ess, log_mean = resampling.ess_and_log_mean(log_weights)
    threshold = jnp.asarray(ess_threshold, log_weights.dtype)
    do_resample = ~is_last & ((ess < threshold * n) | (threshold >= 1))
    resample_key = jax.random.fold_in(key, _RESAMPLE_STREAM)

    def resampled(operands):
        tree, log_w = operands
        ancestors = draw_ancestors(resample_key, log_w)
        return resample_in_place(tree, ancestors), jnp.full_like(log_w, log_mean)

    tree, log_weights = counting.cond(do_resample, resampled, lambda ops: ops, (tree, log_weights))
    return tree, log_weights, ess, log_mean, do_resample


def particle_split(num_particles: int, num_steps: int, nfe_per_step: int | None,
                   row_init: int = 0) -> SearchSplit:
    """The split of an SMC run: N particles over ``num_steps`` steps after ``row_init`` NFE of the base
    sampler's init per particle (the bound assumes 1 NFE per step when the base sampler does not declare
    its cost)."""
    return fixed_split(num_particles, num_steps=num_steps, nfe_per_step=nfe_per_step or 1,
                       group_width=num_particles, row_init=row_init)


def smc_output(particles, log_weights, final_log_potentials, *, split, num_resamples, ever_all_impossible,
               invalid_rewards) -> SearchOutput:
    """The :class:`itscale.search.SearchOutput` of an SMC population: ``scores`` are the particles'
    final log-potentials λ·r(x_0) (−inf for impossible particles; ``best`` is the particle with the
    highest), with the normalised ``log_weights``, ``log_normalizer`` = log Ẑ and, in ``info``: ``ess``
    of the final weights, ``num_resamples``, ``all_impossible`` (every final weight is zero) and
    ``ever_all_impossible`` (that happened at some step)."""
    info = {"ess": resampling.ess(log_weights), "num_resamples": num_resamples,
            "all_impossible": resampling.all_impossible(log_weights), "ever_all_impossible": ever_all_impossible}
    scores = jnp.where(log_weights > -jnp.inf, final_log_potentials, -jnp.inf)
    return search_output(particles, scores, split=split, invalid_rewards=invalid_rewards,
                         log_weights=resampling.log_normalize(log_weights),
                         log_normalizer=resampling.log_mean_exp(log_weights), info=info)


_check_own_params = checks.param_ranges(lam=(-float("inf"), float("inf")), ess_threshold=(0.0, 1.0))


def check_params(sampler: Sampler) -> Callable[[Any, SMCParams], None]:
    """``validate(x, params)`` of an SMC over ``sampler``: λ finite, ESS threshold in [0, 1], then the
    base sampler's own check of ``x`` and ``params.base``."""

    def check(x, params):
        _check_own_params(x, params)
        validate(sampler, x, params.base)

    return check


@takes_models
def smc(sampler: Sampler, reward_fn: Callable, *, num_particles: int, potential: str = "difference",
        resample: str = "systematic", ess_threshold: float = 0.5, lam: float = 1.0,
        preview: Callable[[Any, Any], Any] | None = None) -> Sampler:
    """Sequential Monte Carlo / FK steering of ``sampler`` towards exp(λ·reward); see the module doc.

    Args:
      sampler: base :class:`itscale.Sampler` on a batch of particles (every state leaf leads with N).
      reward_fn: batch -> rewards of shape (N,), higher is better; −inf marks impossible outputs.
      num_particles: static N; ``x`` must lead with this axis.
      potential: "difference" | "max" | "sum" | "immediate" (:mod:`itscale.search.potentials`).
      resample: "systematic" | "stratified" | "multinomial" | "residual".
      ess_threshold: default of ``params.ess_threshold`` in [0, 1]; resample when ESS < it · N.
      lam: default of ``params.lam``, the tilt λ.
      preview: ``(state', info) -> batch`` scored at intermediate steps; default ``info["x0_hat"]``
        if the step's info has it, else ``sampler.finalize(state')``.
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> rewards of shape (N,)")
    if preview is not None and not callable(preview):
        raise TypeError(f"preview must be None or a callable (state, info) -> batch, got "
                        f"{type(preview).__name__}")
    n = checks.positive_int("num_particles", num_particles)
    update_potential = potentials.potential(potential)
    draw_ancestors = resampling.resampler(resample)
    checks.in_range("ess_threshold", ess_threshold, 0.0, 1.0)
    checks.in_range("lam", lam, -float("inf"), float("inf"))
    reward = counting.counted(reward_fn, kind="verifier")

    def score(batch) -> jax.Array:
        r = reward(batch)
        if jnp.shape(r) != (n,):
            raise ValueError(f"reward_fn must return rewards of shape (num_particles,) = ({n},), got "
                             f"shape {jnp.shape(r)}")
        return r

    def init(key, x, params, ctx=None):
        for leaf in jax.tree.leaves(x):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != n:
                raise ValueError(f"x must lead with the particle axis of size num_particles={n}, got a "
                                 f"leaf of shape {jnp.shape(leaf)}")
        base_state = init_state(sampler, key, x, params.base, ctx)
        reward_shape = counting.eval_shape(lambda s: score(sampler.finalize(s)), base_state)
        dtype = jnp.promote_types(reward_shape.dtype, jnp.float32)
        zero = jnp.zeros((), jnp.int32)
        split = None if ctx is None else particle_split(
            n, ctx.num_steps, sampler.nfe_per_step,
            init_nfe_per_row(sampler, key, x, params.base, ctx)).as_arrays()
        return SMCState(base_state, jnp.zeros((n,), dtype), jnp.ones((n,), bool),
                        jax.tree.map(_store, potentials.initial(potential, n, dtype)), zero,
                        jnp.zeros((), bool), zero, split)

    def step(key, state, ctx, params):
        new_base, info = sampler.step(key, state.base, ctx, params.base)
        is_last = ctx.step == ctx.num_steps - 1
        log_weights = _log_weights(state)
        dtype = log_weights.dtype
        r = preview_scores(sampler, score, preview, new_base, info, is_last).astype(dtype)
        invalid = is_invalid(r)
        r = jnp.where(invalid, -jnp.inf, r)
        lam_ = jnp.asarray(params.lam, dtype)
        # Alive particles hold finite potentials; the first step starts from the exact initial values.
        previous = jax.tree.map(lambda first, stored: jnp.where(ctx.step == 0, first, stored),
                                potentials.initial(potential, n, dtype), state.potential)
        moved = update_potential(previous, r, lam_)
        current = jax.tree.map(lambda a, b: jnp.where(is_last, a, b), potentials.final(r, lam_), moved)
        log_weights = log_weights + potentials.increment(previous, current, state.alive)
        (new_base, current), log_weights, ess, log_mean, do_resample = resample_step(
            key, (new_base, current), log_weights, params.ess_threshold, is_last, draw_ancestors)
        dead = log_mean == -jnp.inf                     # resampling keeps the mean: the same after it
        new_state = SMCState(new_base, _store(log_weights), log_weights > -jnp.inf,
                             jax.tree.map(_store, current),
                             state.num_resamples + do_resample.astype(jnp.int32),
                             state.ever_all_impossible | dead,
                             state.invalid_rewards + jnp.sum(invalid, dtype=jnp.int32), state.split)
        step_info = {"ess": ess, "resampled": do_resample, "all_impossible": dead,
                     "log_normalizer": log_mean, "base": info}
        return new_state, step_info

    def finalize(state):
        return smc_output(sampler.finalize(state.base), _log_weights(state), state.potential.log_potential,
                          split=state.split, num_resamples=state.num_resamples,
                          ever_all_impossible=state.ever_all_impossible, invalid_rewards=state.invalid_rewards)

    return Sampler(init, step, finalize, SMCParams(sampler.params, lam, ess_threshold),
                   watch_within(sampler.watch, "base"), sampler.prior, check_params(sampler),
                   nfe_per_step=sampler.nfe_per_step)
