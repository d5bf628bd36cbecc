"""Euler–Maruyama reverse-SDE sampler: transition log-densities, convergence, the data end, budgets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import itscale as its

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]]))
PATH = its.paths.linear()


def moment_error(x, target):
    """|mean error| + |covariance error| (Frobenius) of samples x against a Gaussian mixture."""
    mean_error = jnp.linalg.norm(x.mean(0) - target.mean())
    return float(mean_error + jnp.linalg.norm(jnp.cov(x.T) - target.covariance()))


def test_log_prob_is_the_gaussian_transition_density():
    """log_prob = log N(x_s; x_t - (u - g^2 s / 2) dt, g^2 dt I), recomputed with the exact score, scipy."""
    x1 = jax.random.normal(jax.random.key(0), (6, 2))
    grid = its.paths.Grid()    # t_min = 1e-3: every step a Gaussian move (at sigma = 0 the last denoises)
    sampler = its.refine.sde(GMM.velocity(PATH), PATH, g="kim", grid=grid)
    num_steps = 4
    result = its.run(sampler, jax.random.key(1), x1, num_steps=num_steps, trace=1)
    times = np.asarray(grid.times(num_steps, PATH))
    previous = np.concatenate([np.asarray(x1)[None], np.asarray(result.trace.state.x[:-1])])
    for i in range(num_steps):
        t, dt = times[i], times[i] - times[i + 1]
        x, x_next = previous[i], np.asarray(result.trace.state.x[i])
        g = 3.0 * t**2
        drift = np.asarray(GMM.velocity(PATH)(x, t)) - 0.5 * g**2 * np.asarray(GMM.score(PATH)(x, t))
        want = [stats.multivariate_normal(x[j] - drift[j] * dt, g**2 * dt * np.eye(2)).logpdf(x_next[j])
                for j in range(x.shape[0])]
        np.testing.assert_allclose(result.trace.info["log_prob"][i], want, rtol=1e-9)
        np.testing.assert_allclose(result.trace.info["x0_hat"][i], GMM.denoiser(PATH)(x, t), rtol=1e-9,
                                   atol=1e-12)


def test_em_converges_to_the_data_distribution_as_steps_grow():
    x1 = jax.random.normal(jax.random.key(0), (16384, 2))
    sampler = its.refine.sde(GMM.velocity(PATH), PATH, g="sigma")
    target = GMM.marginal(PATH, 0.0)    # the default grid ends at t = 0 on the linear path: the data law
    errors = [moment_error(its.run(sampler, jax.random.key(1), x1, num_steps=n).output, target)
              for n in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.06 and errors[0] > 3 * errors[2], errors  # 0.06: a few Monte Carlo errors


def test_a_grid_ending_at_sigma_zero_takes_a_final_denoising_step():
    x1 = jax.random.normal(jax.random.key(2), (5, 2))
    grid = its.paths.Grid(t_min=0.0)
    result = its.run(its.refine.sde(GMM.velocity(PATH), PATH, g="constant", grid=grid), jax.random.key(3), x1,
                     num_steps=3, trace=1)
    before_last = result.trace.state.x[-2]
    t_last = float(grid.times(3, PATH)[-2])
    np.testing.assert_allclose(result.output, GMM.denoiser(PATH)(before_last, t_last), rtol=1e-10)
    np.testing.assert_array_equal(result.trace.info["log_prob"][-1], np.zeros(5))
    assert int(result.stats.nonfinite) == 0


def test_g_scale_zero_is_the_euler_ode_and_new_params_never_retrace():
    traces = []

    def velocity(x, t):
        traces.append(1)
        return GMM.velocity(PATH)(x, t)

    x1 = jax.random.normal(jax.random.key(4), (7, 2))
    sampler = its.refine.sde(velocity, PATH, g="sigma")
    sde = its.run(sampler, jax.random.key(5), x1, num_steps=6, params={"g_scale": 0.0})
    its.run(sampler, jax.random.key(5), x1, num_steps=6, params={"g_scale": 2.0})
    assert len(traces) == 1
    ode = its.run(its.refine.ode(GMM.velocity(PATH), "euler"), jax.random.key(5), x1, num_steps=6)
    np.testing.assert_allclose(sde.output, ode.output, rtol=1e-12, atol=1e-12)
    assert int(sde.stats.nfe) == 7 * 6


def test_particles_count_and_keep_batch_leading_state():
    x = jax.random.normal(jax.random.key(6), (3, 4, 2))
    sampler = its.particles(its.refine.sde(GMM.velocity(PATH), PATH), 3)
    result = its.run(sampler, jax.random.key(7), x, num_steps=5)
    assert result.output.shape == (3, 4, 2)
    assert int(result.stats.nfe) == 3 * 4 * 5


def test_model_output_is_checked_at_trace_time():
    bad = its.refine.sde(lambda x, t: x[:, :1], PATH)
    with pytest.raises(ValueError, match="model_fn returned shape"):
        its.run(bad, jax.random.key(0), jnp.zeros((3, 2)), num_steps=2)


def test_forward_g_is_refused_on_a_grid_starting_where_alpha_vanishes():
    with pytest.raises(ValueError, match="t_max < 1"):
        its.refine.sde(lambda x, t: -x, its.paths.linear(), g="forward")
    with pytest.raises(ValueError, match="alpha = 0"):
        its.refine.sde(lambda x, t: -x, its.paths.vp_cosine(), g="forward", grid=np.linspace(1.0, 0.01, 5))
    its.refine.sde(lambda x, t: -x, its.paths.linear(), g="forward", grid=its.paths.Grid("uniform", t_max=0.99))
    its.refine.sde(lambda x, t: -x, its.paths.vp(), g="forward")  # alpha(1) > 0 on VP: finite
