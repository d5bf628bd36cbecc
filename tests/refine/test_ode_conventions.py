"""``its.refine.ode`` conventions: identities between solvers, info["x0_hat"], explicit grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from tests.refine.ode_helpers import wave, x32

PATH = its.paths.linear()


def run_all(samplers, x, **kwargs):
    """``its.run`` of each sampler from the same key, traced into one jitted call (one compilation)."""
    results = jax.jit(lambda x: [its.run(s, jax.random.key(0), x, **kwargs) for s in samplers])(x)
    return [r if "trace" in kwargs else r.output for r in results]


def gmm_velocity():
    gmm = its.models.GaussianMixture(jnp.array([0.5, 0.5], jnp.float32), jnp.array([[-1.0, 0.0], [1.0, 0.5]],
                                     jnp.float32), jnp.stack([0.3 * jnp.eye(2, dtype=jnp.float32)] * 2))
    return gmm, gmm.velocity(PATH)


def test_ddim_is_euler_on_the_linear_path():
    """On alpha = 1 - t, sigma = t, alpha_s x0_hat + sigma_s eps_hat = x + (s - t) u: the same update."""
    samplers = its.refine.ode(wave, "ddim", path=PATH), its.refine.ode(wave, "euler")
    a, b = run_all(samplers, x32((16, 2)), num_steps=7)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["dpm_solver_pp_2m", "unipc", "deis_2", "deis_3"])
def test_multistep_first_step_is_ddim(solver):
    """No history at step 0: the first-order update. (On the linear path t_max = 1 has lambda = -inf, so
    DPM-Solver++ also stays first order at step 1; from step 2 on the history is used.)"""
    samplers = its.refine.ode(wave, solver, path=PATH), its.refine.ode(wave, "ddim", path=PATH)
    a, b = run_all(samplers, x32((8, 2)), num_steps=4, trace=1)
    np.testing.assert_allclose(a.trace.state.x[0], b.trace.state.x[0], rtol=1e-6)
    assert not np.allclose(a.trace.state.x[2], b.trace.state.x[2])


@pytest.mark.parametrize("solver", ["heun", "unipc"])
def test_info_x0_hat_is_the_denoiser_at_the_pre_step_state(solver):
    gmm, velocity = gmm_velocity()
    grid = its.paths.Grid("uniform", t_min=1e-3)
    x = x32((8, 2))
    result = its.run(its.refine.ode(velocity, solver, grid=grid, path=PATH), jax.random.key(0), x,
                     num_steps=4, trace=1)
    times = grid.times(4, dtype=jnp.float32)
    assert set(result.trace.info) == {"x0_hat"}
    # the state recorded after step i - 1 is the pre-step state of step i
    want = jax.jit(jax.vmap(gmm.denoiser(PATH)))(result.trace.state.x[:3], times[1:4])
    np.testing.assert_allclose(result.trace.info["x0_hat"][1:], want, rtol=1e-4, atol=1e-5)


def test_explicit_times_match_the_grid_object():
    velocity = wave
    grid = its.paths.Grid("quadratic", t_min=0.01, t_max=0.99)
    times = np.asarray(grid.times(6, dtype=jnp.float64))
    samplers = its.refine.ode(velocity, "heun", grid=grid), its.refine.ode(velocity, "heun", grid=times)
    a, b = run_all(samplers, x32((8, 2)), num_steps=6)
    np.testing.assert_allclose(a, b, rtol=1e-6)
