"""Tiny samplers with closed-form results, shared by the core tests."""

import jax
import jax.numpy as jnp

import itscale as its


def decay_model(x, t):
    """u(x, t) = -x: an Euler step from t to t - dt maps x to (1 + dt) x, so n steps give (1 + 1/n)^n x."""
    return -x


def euler(model=decay_model) -> its.Sampler:
    """Euler on a uniform grid t: 1 -> 0 with a traced ``scale`` hyper-parameter."""
    model = its.counted(model)

    def step(key, x, ctx, params):
        dt = 1.0 / ctx.num_steps
        return x - dt * params["scale"] * model(x, 1.0 - ctx.step * dt), {"norm": jnp.linalg.norm(x)}

    return its.Sampler(lambda key, x, params: x, step, lambda x: x, {"scale": 1.0})


def noisy(model=decay_model) -> its.Sampler:
    """Adds fresh Gaussian noise each step: results depend on the keys."""
    model = its.counted(model)

    def step(key, x, ctx, params):
        return x - 0.01 * model(x, 0.0) + 0.1 * jax.random.normal(key, x.shape), {}

    return its.Sampler(lambda key, x, params: x, step, lambda x: x)
