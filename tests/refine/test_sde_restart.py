"""Restart sampling: the schedule, the renoising density, accuracy against the exact mixture, budgets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import itscale as its
from itscale.refine.restart import _schedule

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]]))
PATH = its.paths.linear()


def test_schedule_inserts_the_restart_loops_at_the_first_time_below_t_restart_min():
    main = its.paths.Grid().times(5, PATH)  # 1, .8002, .6004, .4006, .2008, .001
    rows = [tuple(float(v) for v in _schedule(main, jnp.int32(i), 0.3, 0.6, 2, 3)) for i in range(5 + 2 * 3)]
    seg = [0.6, 0.6 + (0.2008 - 0.6) / 3, 0.6 + 2 * (0.2008 - 0.6) / 3, 0.2008]
    want = [(1.0, 0.8002, 0), (0.8002, 0.6004, 0), (0.6004, 0.4006, 0), (0.4006, 0.2008, 1),  # main
            (seg[0], seg[1], 0), (seg[1], seg[2], 0), (seg[2], seg[3], 1),                  # restart 1
            (seg[0], seg[1], 0), (seg[1], seg[2], 0), (seg[2], seg[3], 0),                  # restart 2
            (0.2008, 0.001, 0)]                                                             # main again
    np.testing.assert_allclose(rows, want, atol=1e-12)


def test_without_restarts_it_is_the_ode_solver():
    x1 = jax.random.normal(jax.random.key(0), (5, 2))
    sampler = its.refine.restart(GMM.velocity(PATH), PATH, restarts=0)
    restart = its.run(sampler, jax.random.key(1), x1, num_steps=6)
    ode = its.run(its.refine.ode(GMM.velocity(PATH), "heun"), jax.random.key(1), x1, num_steps=6)
    np.testing.assert_allclose(restart.output, ode.output, rtol=1e-12, atol=1e-12)
    assert int(restart.stats.nfe) == int(ode.stats.nfe) == 5 * 6 * 2


def test_renoising_log_prob_is_the_forward_transition_density():
    """x_hi ~ N((a_hi / a_lo) x_lo, s_hi^2 - (a_hi / a_lo)^2 s_lo^2) along the path, on the VP path."""
    path = its.paths.vp()
    x1 = jax.random.normal(jax.random.key(2), (4, 2))
    sampler = its.refine.restart(GMM.velocity(path), path, restarts=1, restart_steps=2, solver="euler")
    result = its.run(sampler, jax.random.key(3), x1, num_steps=6, trace=1)
    main = np.asarray(its.paths.Grid().times(4, path))                    # 6 steps = 4 main + 1 x 2 restart
    j = int(np.argmax(main <= 0.1))                                       # default t_restart_min = 0.1
    t_lo, t_hi = main[j], 0.3
    previous = np.asarray(result.trace.state.x[j - 2])                    # state before step j - 1
    landed = previous + (t_lo - main[j - 1]) * np.asarray(GMM.velocity(path)(previous, main[j - 1]))  # Euler
    ratio = float(path.alpha(t_hi) / path.alpha(t_lo))
    var = float(path.sigma(t_hi)) ** 2 - ratio**2 * float(path.sigma(t_lo)) ** 2
    renoised = np.asarray(result.trace.state.x[j - 1])
    want = [stats.multivariate_normal(ratio * landed[k], var * np.eye(2)).logpdf(renoised[k])
            for k in range(4)]
    np.testing.assert_allclose(result.trace.info["log_prob"][j - 1], want, rtol=1e-8)
    others = np.delete(np.asarray(result.trace.info["log_prob"]), j - 1, axis=0)
    np.testing.assert_array_equal(others, 0.0)


def test_restart_sampler_matches_the_data_distribution():
    n = 16384
    x1 = jax.random.normal(jax.random.key(0), (n, 2))
    target = GMM.marginal(PATH, 0.0)    # the default grid ends at t = 0 on the linear path: the data law
    sampler = its.refine.restart(GMM.velocity(PATH), PATH, restarts=2, restart_steps=3)
    result = its.run(sampler, jax.random.key(1), x1, num_steps=18)
    assert int(result.stats.nfe) == n * 18 * 2
    x = result.output
    mean_se = np.sqrt(np.diag(target.covariance()) / n)
    assert np.all(np.abs(x.mean(0) - target.mean()) < 4.5 * mean_se + 0.01)
    np.testing.assert_allclose(jnp.cov(x.T), target.covariance(), atol=0.04)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'heun', 'euler', 'midpoint', 'rk4'"):
        its.refine.restart(GMM.velocity(PATH), PATH, solver="dpm_solver_pp_2m")
    with pytest.raises(ValueError, match="restarts"):
        its.refine.restart(GMM.velocity(PATH), PATH, restarts=-1)
    sampler = its.refine.restart(GMM.velocity(PATH), PATH, restarts=2, restart_steps=3)
    with pytest.raises(ValueError, match="num_steps must exceed restarts"):
        its.run(sampler, jax.random.key(0), jnp.zeros((2, 2)), num_steps=6)
