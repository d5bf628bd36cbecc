"""Flow ODE -> SDE keeps the flow's marginals, for every diffusion coefficient g (exact Gaussian mixture).

One run per g records the state at several grid times (``trace=``); at each, the sample mean, covariance
and average exact log-density log p_t(x) are compared with the exact marginal ``gmm.marginal(path, t)``,
with tolerances of a few Monte Carlo standard errors plus a small Euler–Maruyama allowance. A control
shows the same statistics reject the marginal at a nearby time (the test has power).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine import diffusion_coefficients
from itscale.refine.flow_to_sde import counted_velocity, reverse_drift

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]]))
PATH = its.paths.linear()
NUM_SAMPLES = 16384
NUM_STEPS = 120
RECORD_EVERY = 40
Z_MAX = 4.5           # standard errors allowed (about 1 false alarm in 10^5 per statistic)
EM_ALLOWANCE = 0.003  # Euler–Maruyama bias allowed at 120 steps, added to each standard error


@jax.jit
def marginal_discrepancies(x, t, key=jax.random.key(99)):
    """Largest standardized difference (z-score, with the EM allowance) of the sample mean, covariance
    and mean exact log-density at time t from those of the exact marginal (estimated from 2n exact draws)."""
    marginal = GMM.marginal(PATH, t)
    exact = marginal.sample(key, 2 * x.shape[0])
    n = x.shape[0]
    mean_se = jnp.sqrt(jnp.diag(jnp.cov(exact.T)) / n)
    z_mean = jnp.abs(jnp.mean(x, 0) - marginal.mean()) / (mean_se + EM_ALLOWANCE)
    centered = exact - exact.mean(0)
    cov_se = jnp.std(centered[:, :, None] * centered[:, None, :], axis=0) / jnp.sqrt(n)
    z_cov = jnp.abs(jnp.cov(x.T) - marginal.covariance()) / (cov_se + EM_ALLOWANCE)
    lp_q, lp_p = marginal.log_prob(x), marginal.log_prob(exact)
    lp_se = jnp.sqrt(jnp.var(lp_q) / n + jnp.var(lp_p) / exact.shape[0])
    z_lp = jnp.abs(jnp.mean(lp_q) - jnp.mean(lp_p)) / (lp_se + EM_ALLOWANCE)
    return jnp.maximum(jnp.maximum(z_mean.max(), z_cov.max()), z_lp)


@pytest.fixture(scope="module")
def runs():
    x1 = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 2))
    out = {}
    for g in ("constant", "sigma", "kim", "forward"):
        grid = its.paths.Grid(t_max=0.995 if g == "forward" else 1.0)  # "forward" g is infinite at alpha = 0
        sampler = its.refine.sde(GMM.velocity(PATH), PATH, g=g, grid=grid)
        result = its.run(sampler, jax.random.key(1), x1, num_steps=NUM_STEPS, trace=RECORD_EVERY)
        times = grid.times(NUM_STEPS, PATH)
        out[g] = (result, [float(times[int(k)]) for k in result.trace.step])
    return out


@pytest.mark.parametrize("g", ["constant", "sigma", "kim", "forward"])
def test_sde_keeps_the_exact_marginals(runs, g):
    result, times = runs[g]
    assert times[-1] == pytest.approx(1e-3)
    assert int(result.stats.nfe) == NUM_SAMPLES * NUM_STEPS
    assert int(result.stats.nonfinite) == 0
    for x, t in zip(result.trace.state.x, times):
        assert float(marginal_discrepancies(x, t)) < Z_MAX, (g, t)


def test_the_marginal_check_has_power(runs):
    result, times = runs["kim"]
    x, t = result.trace.state.x[0], times[0]
    assert float(marginal_discrepancies(x, t + 0.1)) > 2 * Z_MAX


def test_a_user_g_is_scaled_by_g_scale(runs):
    """g(t) = t^2 given as a function, with g_scale 3, is the "kim" coefficient: the same samples."""
    x1 = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 2))
    user = its.refine.sde(GMM.velocity(PATH), PATH, g=lambda t: t**2, grid=its.paths.Grid())  # the runs' grid
    assert user.params == {"g_scale": 1.0}
    got = its.run(user, jax.random.key(1), x1, num_steps=NUM_STEPS, params={"g_scale": 3.0}).output
    np.testing.assert_allclose(got, runs["kim"][0].output, rtol=1e-12, atol=1e-12)


def test_reverse_drift_matches_the_exact_score():
    """f = u - 1/2 g^2 s with s from the velocity equals the same with the mixture's exact score."""
    x = jax.random.normal(jax.random.key(3), (64, 2))
    for t in (0.9, 0.5, 0.05):
        u = GMM.velocity(PATH)(x, t)
        want = u - 0.5 * 0.7**2 * GMM.score(PATH)(x, t)
        np.testing.assert_allclose(reverse_drift(PATH, u, x, t, 0.7), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["x0", "eps", "score"])
def test_any_model_parameterization_gives_the_same_velocity(prediction):
    x = jax.random.normal(jax.random.key(4), (32, 2))
    models = {"x0": GMM.denoiser(PATH), "score": GMM.score(PATH),
              "eps": lambda x, t: -PATH.sigma(t) * GMM.score(PATH)(x, t)}
    velocity = counted_velocity(models[prediction], PATH, prediction)
    np.testing.assert_allclose(velocity(x, 0.4), GMM.velocity(PATH)(x, 0.4), rtol=1e-10, atol=1e-10)


def test_diffusion_coefficient_shapes():
    t = jnp.linspace(0.05, 0.95, 7)
    vp = its.paths.vp()
    np.testing.assert_allclose(its.refine.diffusion_coefficient("kim", PATH)(t, 3.0), 3 * t**2)
    np.testing.assert_allclose(its.refine.diffusion_coefficient("sigma", vp)(t, 2.0), 2 * vp.sigma(t))
    np.testing.assert_allclose(its.refine.diffusion_coefficient("constant", vp)(t, 0.5), 0.5 * jnp.ones(7))
    beta = 0.1 + t * (20.0 - 0.1)  # the forward VP SDE has g = sqrt(beta(t))
    forward = its.refine.diffusion_coefficient("forward", vp)
    np.testing.assert_allclose(forward(t, 1.0), jnp.sqrt(beta), rtol=1e-10)
    assert its.refine.sde(GMM.velocity(PATH), PATH, g="kim").params == {"g_scale": 3.0}


def test_bad_g_and_solver_names_list_the_choices():
    with pytest.raises(ValueError, match="'constant', 'sigma', 'kim', 'forward'"):
        its.refine.sde(GMM.velocity(PATH), PATH, g="cosine")
    with pytest.raises(ValueError, match="'euler_maruyama'"):
        its.refine.sde(GMM.velocity(PATH), PATH, solver="milstein")
    with pytest.raises(ValueError, match="accepted"):
        its.refine.sde(GMM.velocity(PATH), PATH, prediction="noise")
    with pytest.raises(TypeError, match="Path"):
        its.refine.sde(GMM.velocity(PATH), "linear")
    assert diffusion_coefficients.CHOICES == ("constant", "sigma", "kim", "forward")
