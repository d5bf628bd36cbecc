"""``its.refine.ode`` under ``its.particles``: the same numbers as the flattened batch, NFE summed over
particles, one log-density per particle and sample for stochastic DDIM."""

import jax
import numpy as np
import pytest

import itscale as its
from itscale.refine import SOLVERS
from tests.refine.ode_helpers import wave, x32

PATH = its.paths.linear()


@pytest.mark.parametrize("solver", ["rk4", "unipc"])
def test_particles_equal_the_flattened_batch(solver):
    sampler = its.refine.ode(wave, solver, path=PATH)
    x = x32((3, 4, 2))
    result, flat = jax.jit(lambda x: (its.run(its.particles(sampler, 3), jax.random.key(0), x, num_steps=5),
                                      its.run(sampler, jax.random.key(0), x.reshape(12, 2), num_steps=5)))(x)
    np.testing.assert_allclose(result.output.reshape(12, 2), flat.output, rtol=1e-5, atol=1e-6)
    assert int(result.stats.nfe) == int(flat.stats.nfe) == 12 * 5 * SOLVERS[solver].nfe_per_step


def test_stochastic_ddim_under_particles_reports_log_prob_per_sample():
    sampler = its.particles(its.refine.ode(wave, "ddim", path=PATH), 3)
    result = its.run(sampler, jax.random.key(0), x32((3, 4, 2)), num_steps=3, params={"eta": 1.0}, trace=1)
    assert result.trace.info["log_prob"].shape == (3, 3, 4)
    assert np.all(np.isfinite(result.trace.info["log_prob"]))
    assert not np.allclose(result.output[0], result.output[1])
