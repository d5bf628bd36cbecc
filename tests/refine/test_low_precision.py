"""Refine samplers on bfloat16 / float16 states: times and solver coefficients in float32, the state in its
own dtype (stochastically rounded), samples as good as in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.grid_times import grid_times

LINEAR = its.paths.linear()
LOW = [jnp.bfloat16, jnp.float16]


def mixture() -> its.models.GaussianMixture:
    eye = jnp.eye(2, dtype=jnp.float32)
    return its.models.GaussianMixture(jnp.array([0.3, 0.7], jnp.float32),
                                      jnp.array([[-2.0, 0.0], [2.0, 1.0]], jnp.float32),
                                      jnp.stack([0.3 * eye, 0.5 * eye]))


def noise(batch: int) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (batch, 2), jnp.float32)


@pytest.mark.parametrize("grid", ["uniform", "quadratic", np.linspace(1.0, 1e-3, 1001)])
def test_a_bfloat16_state_gets_1001_distinct_float32_times(grid):
    """In bfloat16 the uniform grid of 1000 steps held 255 distinct times: 746 steps of length 0."""
    times = grid_times(grid, None)(1000, jnp.bfloat16)
    assert times.dtype == jnp.float32
    assert np.unique(np.asarray(times)).size == 1001


def test_the_model_gets_float32_times_and_the_state_stays_bfloat16():
    seen = []

    def velocity(x, t):
        seen.append((x.dtype, t.dtype))  # at trace time
        return -x

    result = its.run(its.refine.ode(velocity, "heun"), jax.random.key(0), noise(4).astype(jnp.bfloat16),
                     num_steps=3)
    assert result.output.dtype == jnp.bfloat16
    assert seen and all(pair == (jnp.bfloat16, jnp.float32) for pair in seen), seen


def test_1000_euler_steps_of_a_bfloat16_state_sample_as_well_as_float32():
    """Mean exact log-likelihood of the samples, bfloat16 against float32 from the same noise. Before: -2.91
    against -2.59 (bfloat16 times); rounding each step's state to nearest instead: -4.31 (the increments,
    1e-3 u, are under half a bfloat16 ulp)."""
    gmm = mixture()
    sampler = its.refine.ode(gmm.velocity(LINEAR), "euler")
    x = noise(2048)
    log_lik = {dtype: float(jnp.mean(gmm.log_prob(
        its.run(sampler, jax.random.key(1), x.astype(dtype), num_steps=1000).output.astype(jnp.float32))))
        for dtype in (jnp.float32, jnp.bfloat16)}
    assert abs(log_lik[jnp.bfloat16] - log_lik[jnp.float32]) < 0.05, log_lik


def test_round_like_is_unbiased_and_keeps_wider_dtypes_exact():
    from itscale.refine.grid_times import round_like

    value = jnp.full((200_000,), 1.0 + 2.0**-10, jnp.float32)  # a quarter of the way from 1 to 1 + 2^-7
    rounded = round_like(jax.random.key(0), {"x": value}, {"x": value.astype(jnp.bfloat16)})["x"]
    assert rounded.dtype == jnp.bfloat16
    assert set(np.unique(np.asarray(rounded, np.float32))) == {1.0, 1.0 + 2.0**-7}
    assert abs(float(jnp.mean(rounded.astype(jnp.float32))) - (1.0 + 2.0**-10)) < 2e-5
    exact = jnp.asarray([1.0, -0.5, jnp.inf], jnp.float32)
    np.testing.assert_array_equal(round_like(jax.random.key(0), exact, exact.astype(jnp.bfloat16)), exact)
    np.testing.assert_array_equal(round_like(None, value, value), value)  # same dtype: no key needed


def _samplers(u):
    samplers = {name: its.refine.ode(u, name, path=LINEAR) for name in its.refine.SOLVERS}
    samplers["sde"] = its.refine.sde(u, LINEAR)
    samplers["restart"] = its.refine.restart(u, LINEAR, restarts=1, restart_steps=2)
    samplers["langevin"] = its.refine.langevin(u, LINEAR)
    samplers["ddpm"] = its.refine.ddpm(u, LINEAR)
    return samplers


NAMES = list(_samplers(lambda x, t: x))


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_keeps_a_low_precision_state_close_to_float32(name):
    """Same noise and key: stochastic samplers draw their noise in float32 for every state dtype."""
    sampler = _samplers(mixture().velocity(LINEAR))[name]
    x = noise(256)
    reference, *low = jax.jit(lambda x: [its.run(sampler, jax.random.key(1), x.astype(dtype), num_steps=16)
                                         for dtype in [jnp.float32, *LOW]])(x)
    for dtype, result, tolerance in zip(LOW, low, [0.05, 0.01]):
        assert result.output.dtype == dtype
        assert int(result.stats.nonfinite) == 0
        np.testing.assert_array_equal(result.stats.nfe, reference.stats.nfe)
        error = np.sqrt(np.mean((np.asarray(result.output, np.float32) - np.asarray(reference.output)) ** 2))
        assert error < tolerance, (dtype, error)
