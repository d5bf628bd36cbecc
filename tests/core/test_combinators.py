"""particles, chain and predictor_corrector: same results as doing it by hand, NFE scaled correctly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from tests.core.helpers import euler, noisy


def test_particles_count_and_match_independent_runs():
    x = jax.random.normal(jax.random.key(0), (5, 3, 2))  # 5 particles, each a batch of 3
    result = its.run(its.particles(noisy(), 5), jax.random.key(1), x, num_steps=4)
    assert result.output.shape == x.shape
    assert int(result.stats.nfe) == 5 * 3 * 4
    # particle i is the base sampler driven by its own per-step key: split(fold_in(k, step), 5)[i]
    assert not np.allclose(result.output[0], result.output[1])


def test_one_particle_is_the_sampler_itself():
    x = jax.random.normal(jax.random.key(0), (3, 2))
    alone = its.run(noisy(), jax.random.key(7), x, num_steps=6).output
    wrapped = its.run(its.particles(noisy(), 1), jax.random.key(7), x[None], num_steps=6).output
    np.testing.assert_array_equal(wrapped[0], alone)


def test_particles_reject_a_wrong_leading_axis():
    with pytest.raises(ValueError, match="num_particles=4"):
        its.run(its.particles(noisy(), 4), jax.random.key(0), jnp.ones((3, 2)), num_steps=2)
    with pytest.raises(ValueError, match="num_particles"):
        its.particles(noisy(), 0)


def test_chain_runs_phases_in_order_with_their_own_budgets():
    x = jnp.ones((2, 2))
    result = its.run(its.chain((euler(), 4), (euler(), 6)), jax.random.key(0), x, num_steps=10)
    np.testing.assert_allclose(result.output, x * 1.25 ** 4 * (1 + 1 / 6) ** 6, rtol=1e-5)
    assert int(result.stats.nfe) == 2 * 10
    default = its.chain((euler(), 4), (euler(), 6)).params
    scaled = its.run(its.chain((euler(), 4), (euler(), 6)), jax.random.key(0), x, num_steps=10,
                     params=({"scale": 0.0}, default[1]))
    np.testing.assert_allclose(scaled.output, x * (1 + 1 / 6) ** 6, rtol=1e-5)


def test_chain_initialises_the_next_phase_from_the_previous_output():
    double = its.Sampler(lambda k, x, p: 2 * x, lambda k, s, ctx, p: (s + 1, {}), lambda s: s)
    result = its.run(its.chain((euler(), 2), (double, 3)), jax.random.key(0), jnp.ones((1, 1)), num_steps=5)
    np.testing.assert_allclose(result.output, [[2 * 1.5 ** 2 + 3]], rtol=1e-6)


def test_chain_checks_budget_and_phases():
    with pytest.raises(ValueError, match="num_steps=10"):
        its.run(its.chain((euler(), 4), (euler(), 6)), jax.random.key(0), jnp.ones((2, 2)), num_steps=9)
    with pytest.raises(TypeError, match="phase 1"):
        its.chain((euler(), 4), euler())
    with pytest.raises(ValueError, match="phase 0"):
        its.chain((euler(), 0))


def test_predictor_corrector_adds_corrector_moves_and_their_nfe():
    shrink = its.counted(lambda x: 0.5 * x)
    corrector = its.Sampler(lambda k, x, p: x, lambda k, s, ctx, p: (shrink(s), {}), lambda s: s)
    x = jnp.ones((3, 2))
    result = its.run(its.predictor_corrector(euler(), corrector, corrector_steps=2), jax.random.key(0), x,
                     num_steps=4)
    np.testing.assert_allclose(result.output, x * (1.25 * 0.25) ** 4, rtol=1e-5)
    assert int(result.stats.nfe) == 3 * 4 * (1 + 2)
    with pytest.raises(ValueError, match="corrector_steps"):
        its.predictor_corrector(euler(), corrector, corrector_steps=0)
