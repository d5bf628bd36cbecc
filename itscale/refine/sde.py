"""``its.refine.sde``: sample a flow (or any diffusion model) with a reverse SDE that keeps its marginals.

``sde(model_fn, path, g=..., solver="euler_maruyama", grid=...)`` integrates dx = f dt + g dW_bar from
t_max (noise) to t_min (data), f = u - 1/2 g^2 s (:mod:`itscale.refine.flow_to_sde`), with one model
call per step. Euler–Maruyama from t to s < t, dt = t - s (Kim et al. 2025, arXiv 2503.19385, eq. 9;
Kloeden & Platen 1992, sec. 9.1):

    x_s = x_t - f(x_t, t) dt + g(t) sqrt(dt) z,      z ~ N(0, I).

``g``: ``"constant"``, ``"sigma"``, ``"kim"`` (3 t^2), ``"forward"`` (the forward SDE's diffusion: the
classic reverse SDE of Song et al. 2021) or a function g(t) (:mod:`itscale.refine.diffusion_coefficients`);
its scale is the traced ``params["g_scale"]`` (0 turns the sampler into the Euler ODE solver).

The data end. The score, hence the drift, is singular where sigma = 0. A grid given by kind name
(``"uniform"``, ``"quadratic"``) ends at t_min = 0 where the path's velocity is finite there (``linear``,
``ve``, ``edm``) and at t_min = 1e-3 where it is not (``vp``, ``vp_cosine``; ``karras`` and ``log_snr``
always stop at 1e-3; :func:`itscale.refine.grid_times.default_t_min`); a ``Grid`` or an array is taken as
given. The model is only called at each step's start, never at t_min. If a grid ends where
sigma(t_min) = 0 (the default on ``linear``), the last step is the final denoising step
x_{t_min} = x0_hat(x_t, t), the noise-free limit every sampler takes there (the Euler ODE step on the linear
path, DDIM), with log_prob 0: the output is then a sample of the model's data law rather than of p_{1e-3}.

State ``SDEState(x)``; ``info = {"x0_hat", "log_prob"}``: the denoised estimate at the pre-step state and
log N(x_s; x_t - f dt, g^2 dt I) per sample (0 when g = 0: a deterministic move). The step (times, g,
drift, noise) is computed in at least float32 (:func:`itscale.refine.grid_times.time_dtype`), x_s is stored
in the state's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.paths.grids import Grid
from itscale.paths.grids import grid as as_grid
from itscale.paths.path import Path
from itscale.refine.diffusion_coefficients import DiffusionCoefficient, diffusion_coefficient
from itscale.refine.flow_to_sde import counted_velocity, reverse_drift
from itscale.refine.gaussian_transition import gaussian_move
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.solvers import Clock, Model
from itscale.core.weights import takes_models

SOLVERS = ("euler_maruyama",)
_check_params = checks.param_ranges(g_scale=(0.0, float("inf")))


class SDEState(NamedTuple):
    x: jax.Array


def check_noise(name: str, x) -> None:
    """``x`` must be one floating array with a leading batch axis (the noise at t_max), not a pytree."""
    if not isinstance(x, jax.Array):
        leaves = jax.tree.leaves(x)
        raise TypeError(f"{name} must be one floating array of shape (batch, ...) (the noise at t_max), got "
                        f"a {type(x).__name__} holding {len(leaves)} array(s); a refinement sampler's state "
                        "is a single array: stack or concatenate the parts (or ravel a pytree with "
                        "jax.flatten_util.ravel_pytree) and split them in the model function")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be a floating array (the noise at t_max), got dtype "
                        f"{jnp.result_type(x)}")
    if jnp.ndim(x) < 1:
        raise ValueError(f"{name} must have a leading batch axis, got a scalar")


def euler_maruyama_step(model: Model, coefficient: DiffusionCoefficient, x, clock: Clock, key, g_scale):
    """One Euler–Maruyama step from clock.t() to clock.t(1); returns ``(x_s, info)``."""
    path = model.path
    t, s = clock.t(), clock.t(1)
    u = model.velocity(x, t)
    x0_hat = model.x0(u, x, t)
    dt = t - s
    g = coefficient(t, g_scale).astype(t.dtype)
    mean = x - reverse_drift(path, u, x, t, g) * dt
    std = g * jnp.sqrt(dt)
    data_end = path.sigma(s) == 0
    mean = jnp.where(data_end, x0_hat, mean)
    std = jnp.where(data_end, jnp.zeros_like(std), std)
    x_s, log_prob = gaussian_move(key, mean, std)
    return x_s, {"x0_hat": x0_hat, "log_prob": log_prob}


@takes_models
def sde(model_fn: Callable, path: Path, *, g: str | Callable = "kim", solver: str = "euler_maruyama",
        grid="uniform", prediction: str = "velocity") -> Sampler:
    """Reverse-SDE sampler keeping the marginals of ``model_fn``'s flow; see the module docstring.

    Args:
      model_fn: ``fn(x, t)`` predicting ``prediction`` (``"velocity"``, ``"x0"``, ``"eps"``, ``"score"``) on
        ``path``, with ``x``'s shape and dtype; ``t`` is passed as a scalar of at least float32.
      path: the model's :class:`itscale.paths.Path`.
      g: diffusion coefficient name (``"constant"``, ``"sigma"``, ``"kim"``, ``"forward"``) or ``g(t)``.
      solver: ``"euler_maruyama"``.
      grid: as for :func:`itscale.refine.ode`: a kind name, an :class:`itscale.paths.Grid` or an array of
        decreasing times (then ``num_steps = len(times) - 1``).
    params: ``{"g_scale": float}`` (default: the coefficient's, 3 for ``"kim"``, else 1).
    """
    checks.choice("solver", solver, SOLVERS)
    model = Model(counted_velocity(model_fn, path, prediction), path)
    coefficient = diffusion_coefficient(g, path)
    times_rule = grid_times(grid, path)
    if g == "forward":
        t_max = float(np.asarray(grid)[0]) if not isinstance(grid, (str, Grid)) else as_grid(grid).t_max
        if float(path.alpha(t_max)) == 0.0:
            raise ValueError(f"g='forward' is infinite where alpha(t) = 0, and the grid starts at t_max={t_max} "
                             f"where alpha = 0 on {path.name}; use a grid with t_max < 1 "
                             "(e.g. itscale.paths.Grid('uniform', t_max=0.999)) or another g")

    def init(key, x, params):
        check_noise("x", x)
        return SDEState(x)

    def step(key, state, ctx, params):
        clock = Clock(times_rule(ctx.num_steps, state.x.dtype), ctx.step)
        x, info = euler_maruyama_step(model, coefficient, state.x, clock, key, params["g_scale"])
        return round_like(key, SDEState(x), state), info

    return Sampler(init, step, lambda state: state.x, {"g_scale": coefficient.default_scale},
                   prior=noise_prior(path, grid), validate=_check_params, nfe_per_step=1)
