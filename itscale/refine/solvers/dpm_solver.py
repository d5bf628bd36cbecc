"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2): second-order multistep, data prediction.

Step i, from t_i to t_{i+1}: x_{i+1} = data_update(x_i, d_i) with d_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i),
r_i = h_{i-1} / h_i in lambda = log(alpha / sigma) (see :mod:`exponential`). The previous x0 estimate is
kept in the state; the first step (no history) is the first-order DDIM update. One model call per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.refine.solvers.base import Clock, Model, Solver
from itscale.refine.solvers.exponential import data_update, two_step_estimate


class MultistepState(NamedTuple):
    """``x`` and the model's x0 estimate at the previous grid time (zeros before the first step)."""

    x: jax.Array
    x0_prev: jax.Array


def _init(x) -> MultistepState:
    return MultistepState(x, jnp.zeros_like(x))


def _step(model: Model, state: MultistepState, clock: Clock, key, params):
    x, t_prev, t, s = state.x, clock.t(-1), clock.t(), clock.t(1)
    u = model.velocity(x, t)
    x0 = model.x0(u, x, t)
    d = two_step_estimate(model, x, x0, state.x0_prev, t_prev, t, s, clock.has_history())
    return MultistepState(data_update(model, x, d, t, s), x0), {"x0_hat": x0}


dpm_solver_pp_2m = Solver(name="dpm_solver_pp_2m", order=2, nfe_per_step=1, needs_path=True, init=_init,
                          step=_step, reference="Lu et al. 2022, arXiv 2211.01095")
