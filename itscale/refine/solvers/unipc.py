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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.refine.solvers.base import Clock, Model, Solver
from itscale.refine.solvers.exponential import data_update, two_step_estimate

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


def corrected_estimate(model: Model, x, m_new, m_prev, m_prev2, t_prev2, t_prev, t, has_prev2) -> jax.Array:
    """The UniC-2 estimate d for the step t_prev -> t (UniC-1 when only one earlier evaluation exists)."""
    lam_prev2, lam_prev, lam_t = (model.half_log_snr(u, x) for u in (t_prev2, t_prev, t))
    h = lam_t - lam_prev
    finite = jnp.isfinite(h)
    phi1, phi2, phi3 = _phi(jnp.where(finite, -h, -1.0))
    b1 = jnp.where(finite, phi2 / phi1, 1.0)  # the limit 1 of phi_2 / phi_1 as h -> inf
    b2 = 2.0 * phi3 / phi1
    r1 = (lam_prev2 - lam_prev) / jnp.where(finite, h, 1.0)
    ok2 = has_prev2 & finite & jnp.isfinite(r1) & (r1 < 0)
    r1 = jnp.where(ok2, r1, -1.0)
    rho1 = jnp.where(ok2, (b1 - b2) / (1.0 - r1), 0.0)
    rho2 = b1 - rho1
    return m_prev + rho2 * (m_new - m_prev) + (rho1 / r1) * (m_prev2 - m_prev)


def _step(model: Model, state: UniPCState, clock: Clock, key, params):
    x, t_prev2, t_prev, t, s = state.x, clock.t(-2), clock.t(-1), clock.t(), clock.t(1)
    u = model.velocity(x, t)
    m = model.x0(u, x, t)
    d_corrector = corrected_estimate(model, x, m, state.x0_prev, state.x0_prev2, t_prev2, t_prev, t,
                                     clock.has_history(2))
    x_corrected = jnp.where(clock.has_history(1), data_update(model, state.x_prev, d_corrector, t_prev, t), x)
    d_predictor = two_step_estimate(model, x_corrected, m, state.x0_prev, t_prev, t, s, clock.has_history(1))
    x_next = data_update(model, x_corrected, d_predictor, t, s)
    return UniPCState(x_next, x_corrected, m, state.x0_prev), {"x0_hat": m}


unipc = Solver(name="unipc", order=3, nfe_per_step=1, needs_path=True, init=_init, step=_step,
               reference="Zhao et al. 2023, arXiv 2302.04867")
