"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2): second-order multistep, data prediction.

Step i, from t_i to t_{i+1}: x_{i+1} = ratio_i x_i + weight_i d_i with d_i = x0_i + w_i (x0_i - x0_{i-1}),
w_i = h_i / (2 h_{i-1}) in lambda = log(alpha / sigma) (see :mod:`exponential`). The previous x0 estimate
is kept in the state; the first step (no history) is the first-order DDIM update. One model call per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.solvers.base import Clock, Model, Solver, linear_in_velocity
from itscale.refine.solvers.exponential import grid_neighbours, two_step_weight, update_coefficients


class MultistepState(NamedTuple):
    """``x`` and the model's x0 estimate at the previous grid time (zeros before the first step)."""

    x: jax.Array
    x0_prev: jax.Array


def _init(x) -> MultistepState:
    return MultistepState(x, jnp.zeros_like(x))


def _schedule(path: Path, times) -> dict:
    index, _, t_prev, t, s = grid_neighbours(times)
    x0_u, x0_x = linear_in_velocity(conversions.x0_from_velocity, path, t)
    ratio, weight = update_coefficients(path, t, s)
    return {"x0_u": x0_u, "x0_x": x0_x, "ratio": ratio, "weight": weight,
            "w": two_step_weight(path, t_prev, t, s, index >= 1)}


def _step(model: Model, state: MultistepState, clock: Clock, key, params):
    x, k = state.x, clock.coef
    x0 = k["x0_u"] * model.velocity(x, clock.t()) + k["x0_x"] * x
    d = x0 + k["w"] * (x0 - state.x0_prev)
    return MultistepState(k["ratio"] * x + k["weight"] * d, x0), {"x0_hat": x0}


dpm_solver_pp_2m = Solver(name="dpm_solver_pp_2m", order=2, nfe_per_step=1, needs_path=True, init=_init,
                          step=_step, schedule=_schedule, reference="Lu et al. 2022, arXiv 2211.01095")
