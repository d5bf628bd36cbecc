"""Baselines shared by benchmarks: the bare network cost that a sampler loop is measured against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def bare_loop(velocity, calls: int):
    """``calls`` chained network evaluations in a jitted ``lax.scan``, with nothing else in the loop."""
    times = jnp.linspace(1.0, 0.0, calls)

    @jax.jit
    def loop(x):
        return lax.scan(lambda x, t: (x - 0.01 * velocity(x, t), None), x, times)[0]

    return loop
