"""tAB-DEIS (Zhang & Chen 2022, arXiv 2204.13902, sec. 4, eq. 14): multistep exponential integrator with
the noise prediction eps extrapolated by a polynomial in t.

With rho = sigma / alpha, x / alpha obeys d(x / alpha) = eps_hat(x, t) d rho, so from t to s exactly
(the paper's eq. 9, written for any path x = alpha x0 + sigma eps):

    x_s = (alpha_s / alpha_t) x_t + alpha_s int_{rho_t}^{rho_s} eps_hat(x_tau, tau) d rho(tau).

tAB-DEIS replaces eps_hat on [s, t_i] by the Lagrange polynomial in tau through the model's last q
evaluations eps_{i-j} at the grid times t_{i-j}, j = 0..q-1, with basis polynomials ell_j:

    x_{i+1} = (alpha_{i+1} / alpha_i) x_i + sum_j C_ij eps_{i-j},
    C_ij = alpha_{i+1} int_{rho_i}^{rho_{i+1}} ell_j(tau) d rho(tau).

Since sum_j ell_j = 1 this is DDIM plus corrections by differences,

    x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i + sum_{j >= 1} C_ij (eps_{i-j} - eps_i),

which needs no quadrature for its DDIM part and stays finite where alpha_i = 0 (the first step of the
linear path) and where sigma_{i+1} = 0 (a last step to data). Local error O(h^(q+1)): global order q,
with one model call per step. ``deis_2`` (q = 2) and ``deis_3`` (q = 3) are the paper's tAB1 and
tAB2 (it counts the polynomial degree); the first steps use the points available (DDIM, then q = 2),
as the reference code does.

Corrected start (``deis_3``; not in the paper): the first DDIM step's O(h^2) local error would cap the
global order at 2 (``tests/refine/test_ode_order_exponential.py``). The second step therefore first
re-solves the first with eps linear in t between its two evaluations (the trapezoidal rule of the same
integral, as UniPC's corrector does at every step), at no extra model call:
x_1 = x~_1 + R (eps~_1 - eps_0), R = alpha_1 int_{rho_0}^{rho_1} (tau - t_0) / (t_1 - t_0) d rho(tau),
folded into that step's weights.
R diverges where alpha(t_0) = 0 (rho_0 = inf), so a grid starting there (the linear path at t = 1) keeps
the uncorrected start and ``deis_3`` is order 2 on it.

Since eps is extrapolated in t, the order needs eps smooth in t along the trajectory; on the VP path near
t = 0 (sigma ~ sqrt(t)) a uniform-t grid loses it, the log-SNR grid keeps it.

The C_ij depend only on the grid: they are computed once per grid by Gauss--Legendre quadrature in
lambda = -log rho, where the integrand rho ell_j(tau(lambda)) is smooth (in rho on a step ending at
rho = 0); the reference code uses a 10^4-point Riemann sum in t.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.solvers.base import Clock, Model, Solver, linear_in_velocity
from itscale.refine.solvers.exponential import grid_neighbours, half_log_snr

QUADRATURE_NODES = 16  # per step; with the integrand smooth in lambda this is exact to float64 precision


class DEISState(NamedTuple):
    """``x`` and the model's eps estimates at the previous grid times, newest first (zeros before)."""

    x: jax.Array
    eps_history: tuple[jax.Array, ...]


def d_rho_quadrature(path: Path, t, s) -> tuple[jax.Array, jax.Array]:
    """Nodes tau and weights w, shaped (steps, QUADRATURE_NODES), with sum_k w_k f(tau_k) approximating
    int_{rho(t)}^{rho(s)} f(tau) d rho(tau) for each step t -> s: Gauss--Legendre uniform in lambda
    (d rho = -rho d lambda), or uniform in rho on a step ending at sigma = 0 (lambda_s = +inf)."""
    u, w = (jnp.asarray(a, jnp.result_type(t)) for a in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    u, w = (u + 1.0) / 2.0, w / 2.0  # on [0, 1]
    lam_t, lam_s = half_log_snr(path, t)[:, None], half_log_snr(path, s)[:, None]
    to_data = ~jnp.isfinite(lam_s)
    h = jnp.where(to_data, 0.0, lam_s - lam_t)
    rho_t = jnp.exp(-lam_t)
    rho = jnp.where(to_data, rho_t * (1.0 - u), jnp.exp(-(lam_t + u * h)))
    weights = jnp.where(to_data, -w * rho_t, -w * h * rho)
    return path.t_from_log_snr(-2.0 * jnp.log(rho)), weights


def lagrange_basis(tau, nodes, j: int) -> jax.Array:
    """ell_j(tau) = prod_{k != j} (tau - T_k) / (T_j - T_k) over ``nodes`` T, each of shape (steps,)."""
    ell = jnp.ones_like(tau)
    for k, node in enumerate(nodes):
        if k != j:
            ell = ell * (tau - node[:, None]) / (nodes[j] - node)[:, None]
    return ell


def restart_weight(path: Path, t_start, t) -> jax.Array:
    """R = alpha_t int_{rho(t_start)}^{rho(t)} ell(tau) d rho(tau), ell(tau) = (tau - t_start) / (t - t_start),
    the weight of (eps_t - eps_start) in the step t_start -> t with eps interpolated linearly in tau
    between both ends; 0 where alpha(t_start) = 0 (rho = inf, where this integral diverges)."""
    tau, weights = d_rho_quadrature(path, t_start, t)
    ell = (tau - t_start[:, None]) / (t - t_start)[:, None]
    r = path.alpha(t) * jnp.sum(weights * ell, axis=1)
    return jnp.where(jnp.isfinite(half_log_snr(path, t_start)) & (t < t_start), r, 0.0)


def _schedule(order: int):
    def schedule(path: Path, times) -> dict:
        index, t_prev2, t_prev, t, s = grid_neighbours(times)
        tau, weights = d_rho_quadrature(path, t, s)
        alpha_s = path.alpha(s)
        corrections = [jnp.zeros_like(t) for _ in range(order - 1)]
        for points in range(2, order + 1):  # the most points the history allows: min(i + 1, order)
            nodes = (t, t_prev, t_prev2)[:points]
            for j in range(1, points):
                c = alpha_s * jnp.sum(weights * lagrange_basis(tau, nodes, j), axis=1)
                corrections[j - 1] = jnp.where(index >= points - 1, c, corrections[j - 1])
        eps_weight = path.sigma(s) - sum(corrections)
        if order >= 3:
            # Corrected start: x_1 = x~_1 + R (eps~_1 - eps_0) moves the step from x~_1 by
            # (alpha_s / alpha_1) R (eps~_1 - eps_0), folded into this step's weights at i = 1.
            moved = jnp.where(index == 1, alpha_s * restart_weight(path, t_prev, t) / path.alpha(t), 0.0)
            eps_weight, corrections[0] = eps_weight + moved, corrections[0] - moved
        x0_u, x0_x = linear_in_velocity(conversions.x0_from_velocity, path, t)
        eps_u, eps_x = linear_in_velocity(conversions.eps_from_velocity, path, t)
        return {"x0_u": x0_u, "x0_x": x0_x, "eps_u": eps_u, "eps_x": eps_x, "alpha_s": alpha_s,
                "eps_weight": eps_weight, **{f"c{j}": c for j, c in enumerate(corrections, start=1)}}

    return schedule


def _init(order: int):
    def init(x) -> DEISState:
        return DEISState(x, tuple(jnp.zeros_like(x) for _ in range(order - 1)))

    return init


def _step(model: Model, state: DEISState, clock: Clock, key, params):
    x, k = state.x, clock.coef
    u = model.velocity(x, clock.t())
    x0, eps = k["x0_u"] * u + k["x0_x"] * x, k["eps_u"] * u + k["eps_x"] * x
    x_next = k["alpha_s"] * x0 + k["eps_weight"] * eps
    for j, eps_prev in enumerate(state.eps_history, start=1):
        x_next = x_next + k[f"c{j}"] * eps_prev
    return DEISState(x_next, (eps, *state.eps_history[:-1])), {"x0_hat": x0}


def deis(order: int) -> Solver:
    """The :class:`Solver` record of tAB-DEIS of global order ``order`` (2 or 3), named ``deis_{order}``."""
    if order not in (2, 3):
        raise ValueError(f"deis order must be 2 or 3, got {order!r}")
    return Solver(name=f"deis_{order}", order=order, nfe_per_step=1, needs_path=True, init=_init(order),
                  step=_step, schedule=_schedule(order), reference="Zhang & Chen 2022, arXiv 2204.13902")


deis_2, deis_3 = deis(2), deis(3)
