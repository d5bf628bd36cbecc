"""DDIM (Song et al. 2021, arXiv 2010.02502, eq. 12), written for any path x_t = alpha x0 + sigma eps.

From t to s < t, with x0_hat and eps_hat the model's predictions at x_t:

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,      z ~ N(0, I),
    c = eta sigma_s sqrt(1 - (alpha_t sigma_s / (sigma_t alpha_s))^2),

the posterior std of q(x_s | x_t, x0) times ``eta`` (eta = 1: the DDPM ancestral step; eta = 0: the
deterministic DDIM, a first-order exponential integrator of the flow ODE, Lu et al. 2022). ``eta`` is a
traced hyper-parameter in ``params``; ``info["log_prob"]`` is log N(x_s; mean, c^2 I) per sample, and 0
where c = 0 (a deterministic move, density with respect to the point mass).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.gaussian_transition import gaussian_move
from itscale.refine.solvers.base import Clock, Model, Solver, linear_in_velocity


class DDIMState(NamedTuple):
    x: jax.Array


def _schedule(path: Path, times) -> dict:
    t, s = times[:-1], times[1:]
    x0_u, x0_x = linear_in_velocity(conversions.x0_from_velocity, path, t)
    eps_u, eps_x = linear_in_velocity(conversions.eps_from_velocity, path, t)
    alpha_s, sigma_s = path.alpha(s), path.sigma(s)
    rho = path.alpha(t) * sigma_s / (path.sigma(t) * alpha_s)
    return {"x0_u": x0_u, "x0_x": x0_x, "eps_u": eps_u, "eps_x": eps_x, "alpha_s": alpha_s,
            "sigma_s": sigma_s, "std_per_eta": sigma_s * jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0))}


def _step(model: Model, state: DDIMState, clock: Clock, key, params):
    x, k = state.x, clock.coef
    u = model.velocity(x, clock.t())
    x0, eps = k["x0_u"] * u + k["x0_x"] * x, k["eps_u"] * u + k["eps_x"] * x
    c = jnp.asarray(params["eta"], k["std_per_eta"].dtype) * k["std_per_eta"]
    mean = k["alpha_s"] * x0 + jnp.sqrt(jnp.maximum(k["sigma_s"] ** 2 - c**2, 0.0)) * eps
    # No noise to draw when c = 0 (eta = 0, or sigma_s = 0): skip the random bits, log_prob = 0.
    x_s, log_prob = lax.cond(c > 0, lambda: gaussian_move(key, mean, c),
                             lambda: (mean, jnp.zeros(x.shape[:1], mean.dtype)))
    return DDIMState(x_s), {"x0_hat": x0, "log_prob": log_prob}


ddim = Solver(name="ddim", order=1, nfe_per_step=1, needs_path=True, init=DDIMState, step=_step,
              schedule=_schedule, params={"eta": 0.0}, reference="Song et al. 2021, arXiv 2010.02502")
