"""Gradient-guided DDPM transitions: the proposal of twisted SMC, and DPS-style guidance on its own.

The base transition is the DDPM ancestral step of :func:`itscale.refine.ddpm` (DDIM with eta = 1, Song et
al. 2021, arXiv 2010.02502, eq. 12, on any path): from t to s < t, with x0_hat, eps_hat the model's
predictions at x_t,

    p(x_s | x_t) = N(mean, c^2 I),   mean = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat,
    c = sigma_s sqrt(1 - (alpha_t sigma_s / (sigma_t alpha_s))^2).

A twist log psi_t(x_t) (default lam * r(x0_hat(x_t)), the reward of the denoised estimate) guides it by
shifting the mean by the variance times its gradient (Wu et al. 2023, twisted diffusion sampler, arXiv
2306.17775, eq. 9; Chung et al. 2022, DPS, arXiv 2209.14687, used without reweighting):

    q(x_s | x_t) = N(mean + scale c^2 grad_x log psi_t(x_t), c^2 I).

The gradient is taken through the model (``jax.value_and_grad`` of the summed per-row twists: rows are
independent, so each row gets its own gradient); the model call counts one NFE per row and the reward
one verifier call per row. Drawing x_s = mean_q + c z, the exact log-density ratio is, with
h = scale c grad log psi (the shift in units of c),

    log p(x_s | x_t) - log q(x_s | x_t) = log N(z + h; 0, I) - log N(z; 0, I)

(0 where c = 0: both are the same point mass). :func:`guided` is the guided sampler without weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.flow_to_sde import counted_velocity
from itscale.refine.gaussian_transition import log_prob_of_noise
from itscale.refine.grid_times import grid_times
from itscale.refine.prior import noise_prior
from itscale.refine.sde import check_noise
from itscale.refine.solvers.ddim import ddim


class Twist(NamedTuple):
    """The model and twist evaluated at x_t: velocity u(x_t, t), x0_hat, log psi_t(x_t) (N,) with
    NaN / +inf for an invalid verdict, and grad_x log psi_t (zeros when not asked for)."""

    velocity: jax.Array
    x0_hat: jax.Array
    log_twist: jax.Array
    grad: jax.Array


def _per_row(values) -> jax.Array:
    return jnp.sum(values, axis=tuple(range(1, values.ndim)))


def reward_twist(reward_fn: Callable) -> Callable:
    """The default twist ``(x, t, x0_hat, lam) -> lam * r(x0_hat)`` of shape (N,), λ·(−inf) = −inf for
    every λ; an invalid reward (NaN or +inf) gives NaN, whatever λ, so that it is counted."""
    from itscale.search.output import is_invalid   # here, not at import: itscale.search imports this module
    from itscale.search.potentials import tilt
    reward = counting.counted(reward_fn, kind="verifier")

    def log_twist(x, t, x0_hat, lam):
        r = reward(x0_hat)
        if jnp.shape(r) != x0_hat.shape[:1]:
            raise ValueError(f"reward_fn must return rewards of shape (batch,) = ({x0_hat.shape[0]},), got "
                             f"shape {jnp.shape(r)}")
        invalid = is_invalid(r)
        return jnp.where(invalid, jnp.nan, tilt(lam, jnp.where(invalid, -jnp.inf, r)))

    return log_twist


def ddpm_moments(path: Path, u, x, t, s) -> tuple[jax.Array, jax.Array]:
    """Mean and std c of the DDPM ancestral step from t to s given the velocity ``u`` at (x, t), with the
    coefficients of the ``ddim`` solver's schedule (eta = 1)."""
    k = jax.tree.map(lambda a: a[0], ddim.schedule(path, jnp.stack([t, s])))
    x0, eps = k["x0_u"] * u + k["x0_x"] * x, k["eps_u"] * u + k["eps_x"] * x
    c = k["std_per_eta"]
    return k["alpha_s"] * x0 + jnp.sqrt(jnp.maximum(k["sigma_s"] ** 2 - c**2, 0.0)) * eps, c


def twist_evaluator(velocity_fn: Callable, path: Path, log_twist_fn: Callable, *, with_grad: bool) -> Callable:
    """``evaluate(x, t, lam) -> Twist``: one counted model call at (x, t), the twist of its x0_hat and,
    if ``with_grad``, grad_x log psi through the model (non-finite rows excluded from the sum)."""

    def value(x, t, lam):
        u = velocity_fn(x, t)
        x0 = conversions.x0_from_velocity(path, u, x, t)
        log_twist = log_twist_fn(x, t, x0, lam)
        if jnp.shape(log_twist) != x.shape[:1]:
            raise ValueError(f"the log twist must have shape (batch,) = ({x.shape[0]},), got "
                             f"{jnp.shape(log_twist)}")
        log_twist = jnp.asarray(log_twist).astype(x.dtype)
        total = jnp.sum(jnp.where(jnp.isfinite(log_twist), log_twist, 0.0))
        return total, (u, x0, log_twist)

    def evaluate(x, t, lam) -> Twist:
        if not with_grad:
            _, (u, x0, log_twist) = value(x, t, lam)
            return Twist(u, x0, log_twist, jnp.zeros_like(x))
        (_, (u, x0, log_twist)), grad = jax.value_and_grad(value, has_aux=True)(x, t, lam)
        return Twist(u, x0, log_twist, grad)

    return evaluate


def checked(twist: Twist) -> tuple[Twist, jax.Array]:
    """``(twist, invalid)``: a NaN / +inf log twist, or a finite one with a non-finite gradient, is an
    invalid verdict (counted, read as −inf); the gradient is zeroed wherever the twist is −inf."""
    bad_grad = ~jnp.all(jnp.isfinite(twist.grad.reshape(twist.grad.shape[0], -1)), axis=1)
    invalid = jnp.isnan(twist.log_twist) | (twist.log_twist == jnp.inf) | (
        (twist.log_twist > -jnp.inf) & bad_grad)
    log_twist = jnp.where(invalid, -jnp.inf, twist.log_twist)
    keep = (log_twist > -jnp.inf).reshape((-1,) + (1,) * (twist.grad.ndim - 1))
    return twist._replace(log_twist=log_twist, grad=jnp.where(keep, twist.grad, 0.0)), invalid


def guided_move(key, mean, std, grad, scale) -> tuple[jax.Array, jax.Array]:
    """Draw x_s = mean + scale std^2 grad + std z; returns ``(x_s, log p(x_s) - log q(x_s))`` with p the
    unguided N(mean, std^2 I) and q the guided one (see the module docstring)."""
    z = jax.random.normal(key, mean.shape, mean.dtype)
    h = scale * std * grad
    correction = log_prob_of_noise(z + h, std) - log_prob_of_noise(z, std)
    return mean + std * (z + h), correction


class GuidedState(NamedTuple):
    x: jax.Array


@takes_models
def guided(model_fn: Callable, path: Path, reward_fn: Callable, *, grid="uniform",
           prediction: str = "velocity") -> Sampler:
    """DDPM ancestral sampling guided by grad_x [scale · r(x0_hat(x_t))] (DPS-style, no reweighting):
    samples approximately, not exactly, from p(x_0) exp(scale r(x_0)) / Z.

    params: ``{"scale": 1.0}`` (traced). info: ``{"x0_hat", "log_proposal_correction",
    "invalid_rewards"}``: log p(x_s | x_t) − log q(x_s | x_t) per row, and the number of NaN / +inf rewards
    (or non-finite gradients) met, whose rows move unguided for that step (their gradient is zeroed).
    """
    velocity = counted_velocity(model_fn, path, prediction)
    evaluate = twist_evaluator(velocity, path, reward_twist(reward_fn), with_grad=True)
    times_rule = grid_times(grid, path)

    def init(key, x, params):
        check_noise("x", x)
        return GuidedState(x)

    def step(key, state, ctx, params):
        times = times_rule(ctx.num_steps, state.x.dtype)
        x = state.x.astype(times.dtype)
        t, s = times[ctx.step], times[ctx.step + 1]
        twist, invalid = checked(evaluate(x, t, jnp.asarray(params["scale"], times.dtype)))
        mean, std = ddpm_moments(path, twist.velocity, x, t, s)
        x_s, correction = guided_move(key, mean, std, twist.grad, 1.0)
        return GuidedState(x_s.astype(state.x.dtype)), {
            "x0_hat": twist.x0_hat, "log_proposal_correction": correction,
            "invalid_rewards": jnp.sum(invalid, dtype=jnp.int32)}

    return Sampler(init, step, lambda state: state.x, {"scale": 1.0}, prior=noise_prior(path, grid),
                   validate=checks.param_ranges(scale=(-float("inf"), float("inf"))), nfe_per_step=1)
