"""Tiny samplers with closed-form results, shared by the core tests, and a reader of compiled loops."""

import re

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


def carried_copies(loop, variant, carry, *args) -> list[str]:
    """Lines of the compiled ``loop(variant, carry, *args)`` (``variant`` static, ``carry`` donated) that
    copy an array of ``carry``'s dtype and shape: a loop that updates its carry in place holds none."""
    dtype = jnp.dtype(carry.dtype)
    hlo_type = {"f": "f", "i": "s", "u": "u"}[dtype.kind] + str(8 * dtype.itemsize)
    shape = ",".join(map(str, carry.shape))
    text = jax.jit(loop, static_argnums=0, donate_argnums=1).lower(variant, carry, *args).compile().as_text()
    return [line for line in text.splitlines() if re.search(rf"{hlo_type}\[{shape}\]\S* copy\(", line)]
