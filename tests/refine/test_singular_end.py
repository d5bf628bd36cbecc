"""A grid ending where the path's velocity is singular (t = 0 on vp: sigma_dot(0) = inf) ends with the
denoising step x = x0_hat: the Runge--Kutta solvers' later stages would call the model at t = 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.solvers.runge_kutta import EULER, HEUN, RK4

VP = its.paths.vp()
NUM_STEPS = 32


def mixture() -> its.models.GaussianMixture:
    eye = jnp.eye(2, dtype=jnp.float32)
    return its.models.GaussianMixture(jnp.array([0.3, 0.7], jnp.float32),
                                      jnp.array([[-2.0, 0.0], [2.0, 1.0]], jnp.float32),
                                      jnp.stack([0.3 * eye, 0.5 * eye]))


def noise(batch: int = 4096) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (batch, 2), jnp.float32)


def run(sampler, x, num_steps=NUM_STEPS):
    return its.run(sampler, jax.random.key(1), x, num_steps=num_steps)


GRIDS = {"explicit": np.linspace(1.0, 0.0, NUM_STEPS + 1), "t_min=0": its.paths.Grid("uniform", t_min=0.0)}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("solver", ["heun", "rk4"])
def test_runge_kutta_on_vp_down_to_t_0_takes_a_final_denoising_step(solver, grid):
    gmm = mixture()
    x = noise()
    to_zero = run(its.refine.ode(gmm.velocity(VP), solver, grid=GRIDS[grid], path=VP), x)
    to_1e3 = run(its.refine.ode(gmm.velocity(VP), solver, grid=np.linspace(1.0, 1e-3, NUM_STEPS + 1), path=VP),
                 x)
    assert int(to_zero.stats.nonfinite) == 0 and bool(jnp.all(jnp.isfinite(to_zero.output)))
    stages = its.refine.SOLVERS[solver].nfe_per_step
    assert float(to_zero.stats.nfe_per_sample) == (NUM_STEPS - 1) * stages + 1
    assert float(to_1e3.stats.nfe_per_sample) == NUM_STEPS * stages
    log_lik = [float(jnp.mean(gmm.log_prob(r.output))) for r in (to_zero, to_1e3)]
    assert abs(log_lik[0] - log_lik[1]) < 0.05, log_lik
    np.testing.assert_allclose(jnp.mean(to_zero.output, 0), gmm.mean(), atol=0.1)
    np.testing.assert_allclose(jnp.cov(to_zero.output.T), gmm.covariance(), atol=0.2)


def test_the_denoising_step_is_x0_hat_of_the_last_state():
    """With trace=1: the output is info["x0_hat"] of the last step, whose pre-step state is the one before."""
    gmm = mixture()
    sampler = its.refine.ode(gmm.velocity(VP), "heun", grid=np.linspace(1.0, 0.0, 5), path=VP)
    result = its.run(sampler, jax.random.key(1), noise(64), num_steps=4, trace=1)
    np.testing.assert_array_equal(result.output, result.trace.info["x0_hat"][-1])
    expected = gmm.denoiser(VP)(result.trace.state.x[-2], jnp.float32(0.25))
    np.testing.assert_allclose(result.output, expected, rtol=1e-4, atol=1e-4)


def test_restart_on_vp_down_to_t_0_is_finite():
    gmm = mixture()
    x = noise(1024)
    log_lik = []
    for t_min in (0.0, 1e-3):
        sampler = its.refine.restart(gmm.velocity(VP), VP, restarts=1, restart_steps=2,
                                     grid=its.paths.Grid("uniform", t_min=t_min))
        result = run(sampler, x, num_steps=NUM_STEPS + 2)
        assert int(result.stats.nonfinite) == 0
        log_lik.append(float(jnp.mean(gmm.log_prob(result.output))))
    assert abs(log_lik[0] - log_lik[1]) < 0.1, log_lik


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_the_linear_path_ending_at_t_0_is_unchanged(solver):
    """u is finite at t = 0 on linear: every step is the full Runge--Kutta step, m NFE each."""
    gmm = mixture()
    x = noise(64)
    times = np.linspace(1.0, 0.0, 9)
    u = gmm.velocity(its.paths.linear())
    result = run(its.refine.ode(u, solver, grid=times, path=its.paths.linear()), x, num_steps=8)
    tableau = {"euler": EULER, "heun": HEUN, "rk4": RK4}[solver]
    expected = x
    for t, s in zip(times[:-1].astype(np.float32), times[1:].astype(np.float32)):
        h = s - t
        slopes = []
        for a_j, c_j in zip(tableau.a, tableau.c):
            slopes.append(u(expected + h * sum((a * k for a, k in zip(a_j, slopes)), jnp.zeros_like(x)),
                            jnp.float32(t + c_j * h)))
        expected = expected + h * sum(b * k for b, k in zip(tableau.b, slopes))
    assert float(result.stats.nfe_per_sample) == 8 * len(tableau.b)
    np.testing.assert_allclose(result.output, expected, rtol=1e-4, atol=1e-4)
