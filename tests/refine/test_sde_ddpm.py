"""DDPM ancestral sampler: posterior transition densities, convergence in steps, NFE, parameterizations."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import itscale as its

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]]))


def test_log_prob_is_the_posterior_gaussian_density():
    """x_s ~ q(x_s | x_t, x0_hat): mean (a_ts s_s^2 / s_t^2) x_t + (a_s s_ts^2 / s_t^2) x0_hat, variance
    s_ts^2 s_s^2 / s_t^2 with a_ts = a_t / a_s, s_ts^2 = s_t^2 - a_ts^2 s_s^2 (Kingma et al. 2021, app. A)."""
    path = its.paths.vp()
    x1 = jax.random.normal(jax.random.key(0), (5, 2))
    num_steps = 3
    sampler = its.refine.ddpm(GMM.velocity(path), path)
    result = its.run(sampler, jax.random.key(1), x1, num_steps=num_steps, trace=1)
    times = np.asarray(its.paths.Grid().times(num_steps, path))
    previous = np.concatenate([np.asarray(x1)[None], np.asarray(result.trace.state.x[:-1])])
    for i in range(num_steps):
        t, s = times[i], times[i + 1]
        a_t, s_t, a_s, s_s = (float(f(v)) for v, f in ((t, path.alpha), (t, path.sigma), (s, path.alpha),
                                                        (s, path.sigma)))
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        x = previous[i]
        x0 = np.asarray(GMM.denoiser(path)(x, t))
        mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
        cov = var_ts * s_s**2 / s_t**2 * np.eye(2)
        x_next = np.asarray(result.trace.state.x[i])
        want = [stats.multivariate_normal(mean[j], cov).logpdf(x_next[j]) for j in range(5)]
        np.testing.assert_allclose(result.trace.info["log_prob"][i], want, rtol=1e-9)


def test_ddpm_converges_to_the_data_distribution_as_steps_grow():
    path = its.paths.linear()
    x1 = jax.random.normal(jax.random.key(0), (16384, 2))
    target = GMM.marginal(path, 0.0)    # the default grid ends at t = 0 on the linear path: the data law
    sampler = its.refine.ddpm(GMM.velocity(path), path)
    errors = []
    for n in (4, 16, 64):
        x = its.run(sampler, jax.random.key(1), x1, num_steps=n).output
        errors.append(float(jnp.linalg.norm(x.mean(0) - target.mean())
                            + jnp.linalg.norm(jnp.cov(x.T) - target.covariance())))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.08 and errors[0] > 5 * errors[2], errors


def test_eps_model_and_counted_model_give_one_nfe_per_step():
    path = its.paths.vp()
    calls = its.counted(lambda x, t: -path.sigma(t) * GMM.score(path)(x, t))  # an eps-prediction model
    x1 = jax.random.normal(jax.random.key(2), (4, 2))
    sampler = its.refine.ddpm(calls, path, prediction="eps")
    assert sampler.params == {"eta": 1.0}
    result = its.run(sampler, jax.random.key(3), x1, num_steps=5)
    assert int(result.stats.nfe) == 4 * 5
    velocity_based = its.run(its.refine.ddpm(GMM.velocity(path), path), jax.random.key(3), x1, num_steps=5)
    np.testing.assert_allclose(result.output, velocity_based.output, rtol=1e-9, atol=1e-9)
