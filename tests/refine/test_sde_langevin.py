"""Langevin corrector: leaves the exact marginal (nearly) invariant, pulls other laws towards it, exact
Gaussian log_prob, and composes with its.predictor_corrector."""

import math

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
NUM_SAMPLES = 16384
CORRECTOR_STEPS = 25


def run_corrector(path, t, x, snr, steps=CORRECTOR_STEPS):
    """``steps`` Langevin moves at time t (the grid [1, t] puts step 0's corrector at t)."""
    corrector = its.refine.langevin(GMM.velocity(path), path, grid=its.paths.Grid(t_min=t))
    ctx = its.StepContext(jnp.int32(0), 1)

    @jax.jit
    def correct(x):
        def body(state, key):
            state, info = corrector.step(key, state, ctx, {"snr": jnp.asarray(snr)})
            return state, info["log_prob"]
        return jax.lax.scan(body, corrector.init(None, x, None), jax.random.split(jax.random.key(7), steps))

    state, _ = correct(x)
    return state.x


def z_scores(x, target):
    """|sample moment - exact moment| / standard error, for the mean and the covariance entries."""
    exact = target.sample(jax.random.key(11), 4 * x.shape[0])
    n = x.shape[0]
    z_mean = np.abs(x.mean(0) - target.mean()) / np.sqrt(np.diag(target.covariance()) / n)
    centered = exact - exact.mean(0)
    cov_se = np.std(centered[:, :, None] * centered[:, None, :], axis=0) / np.sqrt(n)
    z_cov = np.abs(np.cov(np.asarray(x).T) - target.covariance()) / cov_se
    return float(max(z_mean.max(), z_cov.max()))


@pytest.mark.parametrize("path_name,t", [("linear", 0.5), ("vp", 0.3)])
def test_exact_marginal_stays_put(path_name, t):
    """Start at exact samples of p_t; after 25 moves (snr 0.05) the moments are still those of p_t.
    Unadjusted Langevin's bias is O(eps): here eps ~ 2 snr^2 E|z|^2 / E|s|^2 ~ 0.5 % of the variance."""
    path = its.paths.get(path_name)
    target = GMM.marginal(path, t)
    x = target.sample(jax.random.key(0), NUM_SAMPLES)
    assert z_scores(run_corrector(path, t, x, snr=0.05), target) < 4.5


def test_corrector_pulls_a_wrong_law_towards_the_marginal():
    """Start from the marginal inflated 1.5x around its mean: far off before, close after (test has power)."""
    path, t = its.paths.linear(), 0.5
    target = GMM.marginal(path, t)
    exact = target.sample(jax.random.key(1), NUM_SAMPLES)
    inflated = target.mean() + 1.5 * (exact - target.mean())
    before = z_scores(inflated, target)
    after = z_scores(run_corrector(path, t, inflated, snr=0.16, steps=80), target)
    assert before > 50 and after < 6, (before, after)


def test_log_prob_is_the_gaussian_move_density():
    """x' ~ N(x + eps s, 2 eps I), eps = 2 (snr E|z| / mean_batch |s|)^2, recomputed with the exact score."""
    path, t, snr = its.paths.linear(), 0.4, 0.2
    x = GMM.marginal(path, t).sample(jax.random.key(2), 6)
    corrector = its.refine.langevin(GMM.velocity(path), path, grid=its.paths.Grid(t_min=t))
    ctx = its.StepContext(jnp.int32(0), 1)
    state, info = corrector.step(jax.random.key(3), corrector.init(None, x, None), ctx, {"snr": snr})
    score = np.asarray(GMM.score(path)(x, t))
    chi_mean = math.sqrt(2) * math.gamma(1.5) / math.gamma(1.0)
    eps = 2 * (snr * chi_mean / np.linalg.norm(score, axis=1).mean()) ** 2
    want = [stats.multivariate_normal(x[j] + eps * score[j], 2 * eps * np.eye(2)).logpdf(state.x[j])
            for j in range(6)]
    np.testing.assert_allclose(info["log_prob"], want, rtol=1e-9)
    np.testing.assert_allclose(info["x0_hat"], GMM.denoiser(path)(x, t), rtol=1e-9, atol=1e-12)


def test_predictor_corrector_improves_a_coarse_ode_and_counts_nfe():
    """On the default grid (t: 1 -> 0 on the linear path) against the data law itself; the corrector makes
    no call after the last step, which lands on t = 0 where sigma = 0."""
    path = its.paths.linear()
    target = GMM.marginal(path, 0.0)
    x1 = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 2))
    ode = its.refine.ode(GMM.velocity(path), "euler")
    pc = its.predictor_corrector(ode, its.refine.langevin(GMM.velocity(path), path), corrector_steps=3)

    def error(x):
        mean_error = jnp.linalg.norm(x.mean(0) - target.mean())
        return float(mean_error + jnp.linalg.norm(jnp.cov(x.T) - target.covariance()))

    plain = its.run(ode, jax.random.key(1), x1, num_steps=8)
    corrected = its.run(pc, jax.random.key(1), x1, num_steps=8)
    assert int(corrected.stats.nfe) == NUM_SAMPLES * (8 + 3 * 7)
    assert error(corrected.output) < 0.5 * error(plain.output)


def test_no_move_and_no_model_call_where_sigma_is_zero():
    path = its.paths.linear()
    grid = its.paths.Grid(t_min=0.0)
    x1 = jax.random.normal(jax.random.key(4), (3, 2))
    pc = its.predictor_corrector(its.refine.sde(GMM.velocity(path), path, grid=grid),
                                 its.refine.langevin(GMM.velocity(path), path, grid=grid), corrector_steps=2)
    result = its.run(pc, jax.random.key(5), x1, num_steps=4)
    assert int(result.stats.nfe) == 3 * (4 + 2 * 3)  # no corrector call after the step landing on t = 0
    assert int(result.stats.nonfinite) == 0
