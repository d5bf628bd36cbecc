"""``its.refine.restart``: Restart sampling (Xu et al. 2023, arXiv 2306.14878, Alg. 1).

The flow ODE is integrated from t_max to t_min over a main grid; when it reaches the first grid time
tau_j <= t_restart_min, the restart loop runs K times: add forward noise from tau_j up to
t_restart_max,

    x_hi = (alpha_hi / alpha_lo) x_lo + sigma_hi sqrt(1 - exp(lambda_hi - lambda_lo)) z,   z ~ N(0, I)

(the exact forward transition of the path, lambda = log(alpha^2 / sigma^2)), then integrate the ODE back
from t_restart_max to tau_j in M steps (uniform in t); then the main grid continues to t_min. The large
noise injections contract accumulated errors while the ODE keeps discretization error small.

Budget. ``restarts`` (K) and ``restart_steps`` (M) are static; ``its.run(..., num_steps=n)`` runs
n - K M main steps plus K M restart steps, so n must exceed K M. The interval ends ``t_restart_min`` and
``t_restart_max`` (the restart strength) are traced ``params``, in the path's time units.
``solver`` is a one-step ODE solver of :func:`itscale.refine.ode` (``"heun"`` as in the paper,
``"euler"``, ``"midpoint"``, ``"rk4"``), NFE per step as declared there.

Each step makes one ODE step; the step that lands on tau_j before a restart also renoises, so its
``info["log_prob"]`` is the log-density of that Gaussian renoising (0 for the deterministic steps), and
``info["x0_hat"]`` comes from the step's first model call at the pre-step state. On a main grid ending
where the path's velocity is singular (t = 0 on ``vp``) every step ending there is the denoising step
x = x0_hat, as in :func:`itscale.refine.ode`. Steps compute in at least float32; x keeps its dtype.
A grid given by kind name ends at t_min = 0 where the model is finite there (:mod:`grid_times`): on
``linear`` for a velocity, eps or score model, not for an x0 model, whose velocity needs 1 / sigma(t_min).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.paths.path import Path
from itscale.refine.flow_to_sde import counted_velocity
from itscale.refine.gaussian_transition import gaussian_move
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.sde import SDEState, check_noise
from itscale.refine.solvers import SOLVERS, Clock, Model
from itscale.refine.solvers.base import denoise_flag
from itscale.core.weights import takes_models

_check_params = checks.param_ranges(t_restart_min=(0.0, 1.0), t_restart_max=(0.0, 1.0))

ODE_SOLVERS = ("heun", "euler", "midpoint", "rk4")


def _schedule(main_times, step, t_low, t_high, restarts: int, restart_steps: int):
    """(t_from, t_to, renoise_after) of step ``step`` (traced) of the full restart schedule."""
    n = main_times.shape[0] - 1
    j = jnp.clip(jnp.sum(main_times > t_low), 1, n)          # first main index with tau_j <= t_low
    tau_j = main_times[j]
    in_restart = (step >= j) & (step < j + restarts * restart_steps)
    main_index = jnp.where(step < j, step, step - restarts * restart_steps)
    offset = jnp.clip(step - j, 0, max(restarts * restart_steps - 1, 0))
    segment, m = offset // restart_steps, offset % restart_steps
    fraction = lambda k: k.astype(main_times.dtype) / restart_steps  # noqa: E731
    seg_from = t_high + (tau_j - t_high) * fraction(m)
    seg_to = t_high + (tau_j - t_high) * fraction(m + 1)
    main_from = main_times[jnp.clip(main_index, 0, n - 1)]
    main_to = main_times[jnp.clip(main_index + 1, 0, n)]
    renoise = jnp.where(in_restart, (m == restart_steps - 1) & (segment < restarts - 1), step == j - 1)
    renoise = renoise & (restarts > 0)
    return (jnp.where(in_restart, seg_from, main_from), jnp.where(in_restart, seg_to, main_to), renoise)


def renoise(path: Path, key, x, t_low, t_high):
    """Draw x_hi ~ p(x_{t_high} | x_{t_low} = x) along ``path``; returns ``(x_hi, log_prob)``."""
    alpha_lo, _, _, _ = path.coefficients(t_low, x)
    alpha_hi, sigma_hi, _, _ = path.coefficients(t_high, x)
    gap = (path.log_snr(t_high) - path.log_snr(t_low)).astype(x.dtype)
    std = sigma_hi * jnp.sqrt(-jnp.expm1(gap))
    return gaussian_move(key, (alpha_hi / alpha_lo) * x, std)


@takes_models
def restart(velocity_fn: Callable, path: Path, *, restarts: int = 2, restart_steps: int = 4,
            solver: str = "heun", grid="uniform", prediction: str = "velocity") -> Sampler:
    """Restart sampler; see the module docstring. params ``{"t_restart_min": 0.1, "t_restart_max": 0.3}``."""
    restarts = checks.positive_int("restarts", restarts, minimum=0)
    restart_steps = checks.positive_int("restart_steps", restart_steps)
    spec = SOLVERS[checks.choice("solver", solver, ODE_SOLVERS)]
    model = Model(counted_velocity(velocity_fn, path, prediction), path)
    times_rule = grid_times(grid, path, prediction)          # its stages call the model at the grid's end
    extra = restarts * restart_steps

    def init(key, x, params):
        check_noise("x", x)
        return SDEState(x)

    def step(key, state, ctx, params):
        if ctx.num_steps <= extra:
            raise ValueError(f"num_steps must exceed restarts * restart_steps = {extra} (the main grid needs "
                             f"at least one step), got num_steps={ctx.num_steps}")
        x = state.x
        main_times = times_rule(ctx.num_steps - extra, x.dtype)
        t_low = jnp.asarray(params["t_restart_min"], main_times.dtype)
        t_high = jnp.asarray(params["t_restart_max"], main_times.dtype)
        t_from, t_to, renoise_after = _schedule(main_times, ctx.step, t_low, t_high, restarts, restart_steps)
        clock = Clock(jnp.stack([t_from, t_to]), jnp.zeros((), jnp.int32),
                      denoise=denoise_flag(path, main_times, t_to))
        solved, info = spec.step(model, spec.init(x), clock, None, spec.params)
        noisy, log_prob = renoise(path, key, solved.x, t_to, t_high)
        x = jnp.where(renoise_after, noisy, solved.x)
        log_prob = jnp.where(renoise_after, log_prob, jnp.zeros_like(log_prob))
        return round_like(key, SDEState(x), state), {**info, "log_prob": log_prob}

    return Sampler(init, step, lambda state: state.x, {"t_restart_min": 0.1, "t_restart_max": 0.3},
                   prior=noise_prior(path, grid), validate=_check_params)
