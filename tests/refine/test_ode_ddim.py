"""DDIM's stochastic side: eta is a traced hyper-parameter; eta = 1 is the DDPM posterior step, whose
log-density the step reports, and whose samples follow the data marginal."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)


def _posterior_log_prob(path, x0, x_t, x_s, t, s):
    """log q(x_s | x_t, x0) for the forward process x_t | x_s ~ N((alpha_t / alpha_s) x_s, sigma_ts^2 I),
    in the textbook form (Kingma et al. 2021, arXiv 2107.00630, eq. 32), independent of the solver code."""
    a_t, s_t, a_s, s_s = path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = (a_ts * s_s**2 / s_t**2) * x_t + (a_s * var_ts / s_t**2) * x0
    var = var_ts * s_s**2 / s_t**2
    d = x_t.shape[-1]
    return -0.5 * jnp.sum((x_s - mean) ** 2, -1) / var - 0.5 * d * jnp.log(2 * jnp.pi * var)


def test_eta_one_reports_the_ddpm_posterior_log_density():
    path, gmm = its.paths.vp(), ref.mixture()
    grid = its.paths.Grid("uniform", t_min=1e-3, t_max=1.0)
    sampler = its.refine.ode(gmm.velocity(path), "ddim", grid=grid, path=path)
    x = ref.noise(batch=8)
    result = its.run(sampler, jax.random.key(2), x, num_steps=5, params={"eta": 1.0}, trace=1)
    times = grid.times(5, dtype=jnp.float64)
    states = jnp.concatenate([x[None], result.trace.state.x])

    @jax.jit
    def expected(before, after, t, s):
        x0 = jax.vmap(gmm.denoiser(path))(before, t)
        return x0, jax.vmap(functools.partial(_posterior_log_prob, path))(x0, before, after, t, s)

    x0, log_prob = expected(states[:-1], states[1:], times[:-1], times[1:])
    np.testing.assert_allclose(result.trace.info["x0_hat"], x0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.trace.info["log_prob"], log_prob, rtol=1e-9)


def test_eta_zero_is_deterministic_with_zero_log_prob():
    path = its.paths.vp()
    sampler = its.refine.ode(ref.mixture().velocity(path), "ddim", path=path)
    x = ref.noise(batch=4)
    run = jax.jit(lambda key, x: its.run(sampler, key, x, num_steps=3, trace=1))
    a, b = (run(jax.random.key(k), x) for k in (0, 1))     # one program: only the key differs
    np.testing.assert_array_equal(a.output, b.output)
    np.testing.assert_array_equal(a.trace.info["log_prob"], 0.0)


def test_new_eta_values_do_not_retrace():
    path = its.paths.vp()
    base = its.refine.ode(ref.mixture().velocity(path), "ddim", path=path)
    sampler = base._replace(step=chex.assert_max_traces(base.step, n=1))
    x = ref.noise(batch=4)
    outputs = [its.run(sampler, jax.random.key(0), x, num_steps=4, params={"eta": eta}).output
               for eta in (0.0, 0.5, 1.0)]
    assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])


def test_eta_one_samples_the_data_marginal():
    """DDPM ancestral sampling with the exact denoiser: the mean and covariance of 2000 samples at t_min
    match those of p_{t_min} (mean within 4 standard errors, covariance within 10%)."""
    path, gmm, t_min = its.paths.vp(), ref.mixture(), 1e-3
    grid = its.paths.Grid("uniform", t_min=t_min, t_max=1.0)
    sampler = its.refine.ode(gmm.velocity(path), "ddim", grid=grid, path=path)
    x = jax.random.normal(jax.random.key(3), (2000, 2), jnp.float64)
    samples = np.asarray(its.run(sampler, jax.random.key(4), x, num_steps=50, params={"eta": 1.0}).output)
    target = gmm.marginal(path, t_min)
    mean, cov = np.asarray(target.mean()), np.asarray(target.covariance())
    stderr = np.sqrt(np.diag(cov) / samples.shape[0])
    assert np.all(np.abs(samples.mean(0) - mean) < 4 * stderr), (samples.mean(0), mean)
    np.testing.assert_allclose(np.cov(samples.T), cov, rtol=0.1, atol=0.05)
