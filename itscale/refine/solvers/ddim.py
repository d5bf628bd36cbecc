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

from itscale.refine.gaussian_transition import gaussian_move
from itscale.refine.solvers.base import Clock, Model, Solver


class DDIMState(NamedTuple):
    x: jax.Array


def _step(model: Model, state: DDIMState, clock: Clock, key, params):
    x, t, s = state.x, clock.t(), clock.t(1)
    u = model.velocity(x, t)
    x0, eps = model.x0(u, x, t), model.eps(u, x, t)
    alpha_t, sigma_t = model.alpha_sigma(t, x)
    alpha_s, sigma_s = model.alpha_sigma(s, x)
    eta = jnp.asarray(params["eta"], x.dtype)
    rho = alpha_t * sigma_s / (sigma_t * alpha_s)
    c = eta * sigma_s * jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0))
    mean = alpha_s * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * eps
    x_s, log_prob = gaussian_move(key, mean, c)
    return DDIMState(x_s), {"x0_hat": x0, "log_prob": log_prob}


ddim = Solver(name="ddim", order=1, nfe_per_step=1, needs_path=True, init=DDIMState, step=_step,
              params={"eta": 0.0}, reference="Song et al. 2021, arXiv 2010.02502")
