"""``twisted_smc(model_fn, path, reward_fn, num_particles=N)``: the twisted diffusion sampler (TDS).

Wu et al. 2023, "Practical and asymptotically exact conditional sampling in diffusion models" (arXiv
2306.17775, Alg. 1). Targets p(x_0) exp(λ r(x_0)) / Z, p the law of the DDPM ancestral chain of
``model_fn`` on ``path`` (:mod:`itscale.refine.guided`), and estimates log Z = log E_p[exp(λ r(x_0))].
With a twist ψ_t(x_t) (default exp(λ r(x0_hat(x_t))), or ``log_twist(x, t, x0_hat, lam)`` of one's own,
e.g. the exact log E[exp(λ r(x_0)) | x_t]), particles start at x_T ~ p(x_T) with log W = log ψ_T(x_T),
and each step from t to s < t

1. proposes x_s ~ q(x_s | x_t) = N(mean_p + γ c² ∇ log ψ_t(x_t), c² I), the base transition p(x_s | x_t)
   = N(mean_p, c² I) with its mean shifted by the variance times the twist's gradient (γ = ``guidance
   scale``; ``guidance="none"``: q = p, no gradient is computed);
2. adds the incremental log-weight (exact Gaussian log-densities)
   log p(x_s | x_t) − log q(x_s | x_t) + log ψ_s(x_s) − log ψ_t(x_t),
   where the last step uses the target potential log ψ_0(x_0) = λ r(x_0), so the weights telescope to
   exp(λ r(x_0)) Π p / q and Ẑ = mean W_final is unbiased for Z (Del Moral 2004);
3. resamples like :func:`itscale.search.smc` (:func:`itscale.search.smc.resample_step`: ESS below
   ``ess_threshold`` · N, never after the last step, in place, log W reset to the mean).

The model and twist are evaluated once per particle at every state x_t but x_0 (one NFE per particle
and step; ``init`` makes the evaluation at x_T, the last step none), and cached in the state with the
velocity and gradient the next proposal needs. The reward is one verifier call per particle and
evaluation (the gradient does not count again). An invalid verdict (a NaN / +inf reward or log twist, or
a finite twist with a non-finite gradient) is counted and makes the particle impossible; if every
weight becomes −inf nothing is NaN and ``all_impossible`` reports it. ``lam``, ``guidance_scale`` and
``ess_threshold`` live in ``params`` (traced). Run on noise of shape (num_particles, ...); for a batch of
queries use ``its.particles(twisted_smc(...), num_queries)`` on (num_queries, num_particles, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.paths.path import Path
from itscale.refine.flow_to_sde import counted_velocity
from itscale.refine.grid_times import grid_times
from itscale.refine.guided import Twist, checked, ddpm_moments, guided_move, reward_twist, twist_evaluator
from itscale.refine.prior import noise_prior
from itscale.refine.sde import check_noise
from itscale.search import resampling
from itscale.search.smc import particle_split, resample_step, smc_output
from itscale.search.split import SearchSplit

GUIDANCE = ("twisted", "none")


class TwistedState(NamedTuple):
    """Particles x_t, the model and twist evaluated at them (``twist``), and their weights, stored
    without infinities as in :class:`itscale.search.smc.SMCState`: ``alive`` is False for impossible
    particles, whose stored log-weight and log twist are placeholders (0)."""

    x: jax.Array
    twist: Twist
    log_weights: jax.Array
    alive: jax.Array
    num_resamples: jax.Array
    ever_all_impossible: jax.Array
    invalid_rewards: jax.Array
    split: SearchSplit


def _store(twist: Twist, alive) -> Twist:
    return twist._replace(log_twist=jnp.where(alive, twist.log_twist, 0.0))


def _log_weights(state: TwistedState) -> jax.Array:
    return jnp.where(state.alive, state.log_weights, -jnp.inf)


@takes_models
def twisted_smc(model_fn: Callable, path: Path, reward_fn: Callable, *, num_particles: int, lam: float = 1.0,
                guidance: str = "twisted", guidance_scale: float = 1.0, log_twist: Callable | None = None,
                resample: str = "systematic", ess_threshold: float = 0.5, grid="uniform",
                prediction: str = "velocity") -> Sampler:
    """Twisted SMC over the DDPM chain of ``model_fn``; see the module docstring.

    Args:
      model_fn: ``fn(x, t)`` predicting ``prediction`` (``"velocity"``, ``"x0"``, ``"eps"``, ``"score"``)
        on ``path``; differentiable in ``x`` when ``guidance="twisted"``.
      path: the model's :class:`itscale.paths.Path`.
      reward_fn: batch -> rewards of shape (N,), higher is better; −inf marks impossible outputs.
      num_particles: static N; ``x`` must lead with this axis.
      lam: default of ``params["lam"]``, the tilt λ.
      guidance: ``"twisted"`` (the gradient-shifted proposal) or ``"none"`` (the base transition).
      guidance_scale: default of ``params["guidance_scale"]`` (γ; only with ``"twisted"``).
      log_twist: ``(x, t, x0_hat, lam) -> (N,)``, log ψ_t; default ``lam * reward_fn(x0_hat)``.
      resample: ``"systematic"`` | ``"stratified"`` | ``"multinomial"`` | ``"residual"``.
      ess_threshold: default of ``params["ess_threshold"]`` in [0, 1].
      grid, prediction: as for :func:`itscale.refine.ddpm`.
    output: :class:`itscale.search.SearchOutput` (:func:`itscale.search.smc.smc_output`: scores are the
    final log twists λ·r(x_0)).
    """
    checks.function("reward_fn", reward_fn, "batch -> rewards of shape (N,)")
    if log_twist is not None and not callable(log_twist):
        raise TypeError(f"log_twist must be None or a callable (x, t, x0_hat, lam) -> (N,), got "
                        f"{type(log_twist).__name__}")
    n = checks.positive_int("num_particles", num_particles)
    checks.choice("guidance", guidance, GUIDANCE)
    draw_ancestors = resampling.resampler(resample)
    checks.in_range("ess_threshold", ess_threshold, 0.0, 1.0)
    checks.in_range("lam", lam, -float("inf"), float("inf"))
    checks.in_range("guidance_scale", guidance_scale, -float("inf"), float("inf"))
    velocity = counted_velocity(model_fn, path, prediction)
    target = reward_twist(reward_fn)
    evaluate = twist_evaluator(velocity, path, target if log_twist is None else log_twist,
                               with_grad=guidance == "twisted")
    times_rule = grid_times(grid, path)
    params = {"lam": lam, "ess_threshold": ess_threshold}
    if guidance == "twisted":
        params["guidance_scale"] = guidance_scale

    def init(key, x, params, ctx=None):
        check_noise("x", x)
        if x.shape[0] != n:
            raise ValueError(f"x must lead with the particle axis of size num_particles={n}, got shape "
                             f"{x.shape}")
        if ctx is None:
            raise ValueError("twisted_smc evaluates the twist at the grid's first time: run it with its.run "
                             "(init needs the number of steps)")
        times = times_rule(ctx.num_steps, x.dtype)
        lam_ = jnp.asarray(params["lam"], times.dtype)
        twist, invalid = checked(evaluate(x.astype(times.dtype), times[0], lam_))
        alive = twist.log_twist > -jnp.inf
        dead = ~jnp.any(alive)
        return TwistedState(x, _store(twist, alive), jnp.where(alive, twist.log_twist, 0.0), alive,
                            jnp.zeros((), jnp.int32), dead, jnp.sum(invalid, dtype=jnp.int32),
                            particle_split(n, ctx.num_steps, 1).as_arrays())

    def step(key, state, ctx, params):
        times = times_rule(ctx.num_steps, state.x.dtype)
        dtype = times.dtype
        t, s = times[ctx.step], times[ctx.step + 1]
        is_last = ctx.step == ctx.num_steps - 1
        lam_ = jnp.asarray(params["lam"], dtype)
        x = state.x.astype(dtype)
        old = state.twist
        mean, std = ddpm_moments(path, old.velocity, x, t, s)
        scale = jnp.asarray(params.get("guidance_scale", 0.0), dtype)
        x_s, correction = guided_move(key, mean, std, old.grad, scale)

        def at_data(x_s):
            zeros = jnp.zeros_like(x_s)
            return Twist(zeros, x_s, target(x_s, s, x_s, lam_).astype(dtype), zeros)

        new, invalid = checked(counting.cond(is_last, at_data, lambda x_s: evaluate(x_s, s, lam_), x_s))
        log_weights = jnp.where(state.alive, state.log_weights + correction + new.log_twist - old.log_twist,
                                -jnp.inf)
        (x_s, new), log_weights, ess, log_mean, resampled = resample_step(
            key, (x_s, new), log_weights, params["ess_threshold"], is_last, draw_ancestors)
        alive = log_weights > -jnp.inf
        dead = log_mean == -jnp.inf
        new_state = TwistedState(x_s.astype(state.x.dtype), _store(new, alive),
                                 jnp.where(alive, log_weights, 0.0), alive,
                                 state.num_resamples + resampled.astype(jnp.int32),
                                 state.ever_all_impossible | dead,
                                 state.invalid_rewards + jnp.sum(invalid, dtype=jnp.int32), state.split)
        return new_state, {"ess": ess, "resampled": resampled, "all_impossible": dead,
                           "log_normalizer": log_mean, "x0_hat": old.x0_hat}

    def finalize(state):
        return smc_output(state.x, _log_weights(state), state.twist.log_twist, split=state.split,
                          num_resamples=state.num_resamples, ever_all_impossible=state.ever_all_impossible,
                          invalid_rewards=state.invalid_rewards)

    return Sampler(init, step, finalize, params, prior=noise_prior(path, grid),
                   validate=checks.param_ranges(lam=(-float("inf"), float("inf")), ess_threshold=(0.0, 1.0),
                                                guidance_scale=(-float("inf"), float("inf"))),
                   nfe_per_step=1)
