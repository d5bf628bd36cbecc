"""UniPC-2 (Zhao et al. 2023, arXiv 2302.04867), B(h) = e^h - 1 variant ("bh2"), data prediction.

Each step makes one model call, at the predicted point x~_i, and uses it twice:

1. **UniC corrector** re-solves the previous step t_{i-1} -> t_i from the corrected x_{i-1} with the new
   evaluation m_i = x0_hat(x~_i): x_i = data_update(x_{i-1}, d) with
   d = m_{i-1} + rho_2 (m_i - m_{i-1}) + rho_1 (m_{i-2} - m_{i-1}) / r_1,
   r_1 = (lambda_{i-2} - lambda_{i-1}) / h, (rho_1, rho_2) solving [[1, 1], [r_1, 1]] rho = (b_1, b_2),
   b_1 = phi_2 / phi_1, b_2 = 2 phi_3 / phi_1 at -h
   (the paper's UniC with two points and B(h) = e^h - 1; for small h, d tends to the Adams--Moulton
   weights (5, 8, -1) / 12).
   With one previous evaluation only (second step) rho_2 = b_1, the exact one-point solve (the reference
   code rounds it to its limit 1/2; b_1 -> 1 as h -> inf, which keeps an infinite first log-SNR step sound).
2. **UniP-2 predictor** from the corrected x_i to t_{i+1}: the DPM-Solver++(2M) update (UniP-2 with
   rho = 1/2 is the same rule), giving x~_{i+1}, where the next step evaluates the model.

The corrector raises the order from 2 to 3 at no extra model call. The first step has no history
(first-order predictor, no corrector); the last step is not corrected (that would cost a call).
All scalar weights are tabulated per grid step by ``_schedule``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.solvers.base import Clock, Model, Solver, linear_in_velocity
from itscale.refine.solvers.exponential import (grid_neighbours, half_log_snr, two_step_weight,
                                                update_coefficients)

_SERIES_CUTOFF = 0.1  # |z| below which phi_k uses its Taylor series (the recursion cancels badly)
_SERIES_TERMS = 9


class UniPCState(NamedTuple):
    """x: predicted point where the next model call is made; x_prev: corrected state at the previous grid
    time; x0_prev, x0_prev2: the model's x0 estimates at the previous two grid times."""

    x: jax.Array
    x_prev: jax.Array
    x0_prev: jax.Array
    x0_prev2: jax.Array


def _init(x) -> UniPCState:
    zeros = jnp.zeros_like(x)
    return UniPCState(x, zeros, zeros, zeros)


def _phi(z) -> tuple[jax.Array, jax.Array, jax.Array]:
    """phi_1, phi_2, phi_3 at z: phi_1 = (e^z - 1) / z, phi_{k+1} = (phi_k - 1/k!) / z; Taylor series
    sum_j z^j / (j + k)! near 0."""
    small = jnp.abs(z) < _SERIES_CUTOFF
    zs = jnp.where(small, z, 0.0)
    series = [sum(zs**j / math.factorial(j + k) for j in range(_SERIES_TERMS)) for k in (1, 2, 3)]
    zd = jnp.where(small, -1.0, z)
    phi1 = jnp.expm1(zd) / zd
    phi2 = (phi1 - 1.0) / zd
    phi3 = (phi2 - 0.5) / zd
    return tuple(jnp.where(small, s, d) for s, d in zip(series, (phi1, phi2, phi3)))


def corrector_weights(path: Path, t_prev2, t_prev, t, has_prev2) -> tuple[jax.Array, jax.Array]:
    """(rho_new, rho_old) of the UniC estimate for the step t_prev -> t,
    d = m_prev + rho_new (m_new - m_prev) + rho_old (m_prev2 - m_prev); UniC-1 (rho_old = 0) when only one
    earlier evaluation exists or a log-SNR step is infinite."""
    lam_prev2, lam_prev, lam_t = (half_log_snr(path, u) for u in (t_prev2, t_prev, t))
    h = lam_t - lam_prev
    finite = jnp.isfinite(h)
    phi1, phi2, phi3 = _phi(jnp.where(finite, -h, -1.0))
    b1 = jnp.where(finite, phi2 / phi1, 1.0)  # the limit 1 of phi_2 / phi_1 as h -> inf
    b2 = 2.0 * phi3 / phi1
    r1 = (lam_prev2 - lam_prev) / jnp.where(finite, h, 1.0)
    ok2 = has_prev2 & finite & jnp.isfinite(r1) & (r1 < 0)
    r1 = jnp.where(ok2, r1, -1.0)
    rho1 = jnp.where(ok2, (b1 - b2) / (1.0 - r1), 0.0)
    return b1 - rho1, rho1 / r1


def _schedule(path: Path, times) -> dict:
    index, t_prev2, t_prev, t, s = grid_neighbours(times)
    x0_u, x0_x = linear_in_velocity(conversions.x0_from_velocity, path, t)
    ratio, weight = update_coefficients(path, t, s)
    ratio_c, weight_c = update_coefficients(path, t_prev, t)
    rho_new, rho_old = corrector_weights(path, t_prev2, t_prev, t, index >= 2)
    return {"x0_u": x0_u, "x0_x": x0_x, "ratio": ratio, "weight": weight,
            "w": two_step_weight(path, t_prev, t, s, index >= 1), "correct": (index >= 1).astype(t.dtype),
            "ratio_c": ratio_c, "weight_c": weight_c, "rho_new": rho_new, "rho_old": rho_old}


def _step(model: Model, state: UniPCState, clock: Clock, key, params):
    x, k = state.x, clock.coef
    m = k["x0_u"] * model.velocity(x, clock.t()) + k["x0_x"] * x
    d_corrector = (state.x0_prev + k["rho_new"] * (m - state.x0_prev)
                   + k["rho_old"] * (state.x0_prev2 - state.x0_prev))
    corrected = k["ratio_c"] * state.x_prev + k["weight_c"] * d_corrector
    x_corrected = jnp.where(k["correct"] > 0, corrected, x)
    d_predictor = m + k["w"] * (m - state.x0_prev)
    x_next = k["ratio"] * x_corrected + k["weight"] * d_predictor
    return UniPCState(x_next, x_corrected, m, state.x0_prev), {"x0_hat": m}


unipc = Solver(name="unipc", order=3, nfe_per_step=1, needs_path=True, init=_init, step=_step,
               schedule=_schedule, reference="Zhao et al. 2023, arXiv 2302.04867")
