"""GaussianMixture: exact score / denoiser / velocity against autodiff of the marginal density, density
against scipy, sampling moments, and exact reward tilts against Monte Carlo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.special import logsumexp

import itscale.paths as paths
from itscale.models import GaussianMixture

jax.config.update("jax_enable_x64", True)


def random_mixture(seed, k, d, spread=2.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    covs = a @ a.transpose(0, 2, 1) / d + 0.05 * np.eye(d)  # full, random, well away from singular
    return GaussianMixture(rng.dirichlet(np.ones(k)), spread * rng.normal(size=(k, d)), covs)


def noised_points(gmm, path, t, seed):
    """Points where the marginal at t has mass (x = alpha x0 + sigma eps), plus two far away."""
    x0 = np.asarray(gmm.sample(jax.random.PRNGKey(seed), 7))
    eps = np.random.default_rng(seed).normal(size=x0.shape)
    tb = np.reshape(t, (-1, 1))
    x = np.asarray(path.alpha(tb)) * x0 + np.asarray(path.sigma(tb)) * eps
    x[:2] *= 4.0  # extreme responsibilities
    return x


@functools.partial(jax.jit, static_argnums=1)
def autodiff_reference(gmm, path, x, t):
    """score = grad log p_t by autodiff of marginal().log_prob; Tweedie denoiser; path-formula velocity."""
    t = jnp.broadcast_to(t, x.shape[:1])
    score = jax.vmap(lambda xi, ti: jax.grad(gmm.marginal(path, ti).log_prob)(xi))(x, t)
    tb = t[:, None]
    a, s, ad, sd = path.alpha(tb), path.sigma(tb), path.alpha_dot(tb), path.sigma_dot(tb)
    x0 = (x + s**2 * score) / a
    velocity = ad * x0 + sd * (-s * score)  # alpha_dot E[x0|x] + sigma_dot E[eps|x], E[eps|x] = -sigma score
    return score, x0, velocity


@functools.partial(jax.jit, static_argnums=1)
def closed_form(gmm, path, x, t):
    return gmm.score(path)(x, t), gmm.denoiser(path)(x, t), gmm.velocity(path)(x, t)


@pytest.mark.parametrize("path", [paths.linear(), paths.vp()], ids=repr)
@pytest.mark.parametrize("k, d", [(3, 2), (4, 16)])
def test_score_denoiser_velocity_equal_autodiff_of_marginal(path, k, d):
    gmm = random_mixture(seed=d, k=k, d=d)
    vector_t = jnp.asarray([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97])
    for i, t in enumerate([0.05, 0.3, 0.7, 0.95, vector_t]):
        t = jnp.asarray(t)
        x = noised_points(gmm, path, t, seed=i)
        for exact, reference in zip(closed_form(gmm, path, x, t), autodiff_reference(gmm, path, x, t)):
            assert exact.shape == x.shape and exact.dtype == jnp.float64
            np.testing.assert_allclose(exact, reference, rtol=1e-6, atol=1e-6)


def test_velocity_equals_mean_of_conditional_velocity_by_monte_carlo():
    """Independent of the score: u(x_t) = E[alpha_dot x0 + sigma_dot eps | x_t], here by importance
    weighting prior draws x0 with the Gaussian likelihood N(x_t; alpha x0, sigma^2 I)."""
    gmm, path, t = random_mixture(5, 2, 2), paths.linear(), 0.6
    x = jnp.asarray([[0.4, -0.3]])

    @jax.jit
    def monte_carlo(g):
        x0 = g.sample(jax.random.PRNGKey(3), 100_000)
        a, s = path.alpha(t), path.sigma(t)
        posterior_mean = jax.nn.softmax(-0.5 * jnp.sum((x - a * x0) ** 2, axis=1) / s**2) @ x0
        eps_mean = (x[0] - a * posterior_mean) / s
        return posterior_mean, path.alpha_dot(t) * posterior_mean + path.sigma_dot(t) * eps_mean

    posterior_mean, u = monte_carlo(gmm)
    np.testing.assert_allclose(gmm.denoiser(path)(x, t)[0], posterior_mean, atol=0.02)
    np.testing.assert_allclose(gmm.velocity(path)(x, t)[0], u, atol=0.05)


@pytest.mark.parametrize("k, d", [(1, 1), (3, 2), (4, 5)])
def test_log_prob_matches_scipy(k, d):
    gmm = random_mixture(seed=10 + d, k=k, d=d)
    x = np.random.default_rng(0).normal(size=(4, 3, d)) * 2.0
    expected = logsumexp(np.stack([np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(x)
                                   for w, m, c in zip(gmm.weights, gmm.means, gmm.covs)]), axis=0)
    np.testing.assert_allclose(gmm.log_prob(x), expected, rtol=1e-10)
    assert gmm.log_prob(x[0, 0]).shape == ()


def test_sample_moments_and_one_dimensional_law():
    gmm = random_mixture(seed=4, k=3, d=3)
    n = 200_000
    x = np.asarray(gmm.sample(jax.random.PRNGKey(0), n))
    assert x.shape == (n, 3)
    mean, cov = np.asarray(gmm.mean()), np.asarray(gmm.covariance())
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4.0 * np.sqrt(np.diag(cov) / n))
    centered = x - mean
    products = centered[:, :, None] * centered[:, None, :]
    standard_error = products.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(products.mean(0) - cov), 4.0 * standard_error)
    # KS test of a random projection against the exact 1-D mixture law
    v = np.array([0.6, -0.3, 0.74])
    loc, scale = np.asarray(gmm.means) @ v, np.sqrt(np.einsum("i,kij,j->k", v, np.asarray(gmm.covs), v))
    def cdf(z):
        return np.sum(np.asarray(gmm.weights) * scipy.stats.norm.cdf((z[:, None] - loc) / scale), axis=1)

    assert scipy.stats.kstest(x[:20_000] @ v, cdf).pvalue > 1e-3


def test_moments_match_explicit_formulas_and_marginal():
    gmm = random_mixture(seed=8, k=3, d=2)
    w, mu, covs = (np.asarray(a) for a in (gmm.weights, gmm.means, gmm.covs))
    m = w @ mu
    second = np.einsum("k,kij->ij", w, covs + mu[:, :, None] * mu[:, None, :])
    np.testing.assert_allclose(gmm.mean(), m, rtol=1e-13)
    np.testing.assert_allclose(gmm.covariance(), second - np.outer(m, m), rtol=1e-12, atol=1e-13)
    path, t = paths.vp(), 0.4
    marginal = gmm.marginal(path, t)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    np.testing.assert_allclose(marginal.mean(), a * m, rtol=1e-13)
    np.testing.assert_allclose(marginal.covariance(), a**2 * gmm.covariance() + s**2 * np.eye(2), rtol=1e-12)
    linear_at_zero = gmm.marginal(paths.linear(), 0.0)
    np.testing.assert_allclose(linear_at_zero.covs, gmm.covs, rtol=1e-15)


def _monte_carlo_log_z(log_rewards):
    """log E_p[exp(r(x))] from prior samples' log-rewards r, and the delta-method standard error."""
    shift = log_rewards.max()
    weights = np.exp(log_rewards - shift)
    mean = weights.mean()
    return np.log(mean) + shift, weights.std() / (np.sqrt(log_rewards.shape[0]) * mean)


@pytest.mark.parametrize("k, d, seed", [(3, 2, 0), (3, 8, 1)])
def test_tilted_log_normalizers_match_monte_carlo(k, d, seed):
    gmm = random_mixture(seed=20 + d, k=k, d=d, spread=1.0)
    rng = np.random.default_rng(seed)
    center, b = rng.normal(size=d), rng.normal(size=(d, d))
    precision = 0.3 * (b @ b.T) / d  # full PSD precision, mild so the MC estimate is well behaved
    direction = 0.3 * rng.normal(size=d) / np.sqrt(d)

    @jax.jit
    def log_rewards(g, key):
        x = g.sample(key, 1_000_000)
        return -0.5 * jnp.einsum("ni,ij,nj->n", x - center, precision, x - center), x @ direction

    quadratic, linear = (np.asarray(r) for r in log_rewards(gmm, jax.random.PRNGKey(seed)))
    exact = (gmm.tilted(center, precision), gmm.tilted_linear(direction))
    for (_, log_z), rewards in zip(exact, (quadratic, linear)):
        estimate, standard_error = _monte_carlo_log_z(rewards)
        assert abs(float(log_z) - estimate) < 3.0 * standard_error, (float(log_z), estimate, standard_error)


@pytest.mark.parametrize("rank", [0, 1, 4])
def test_tilted_density_is_exact(rank):
    d = 4
    gmm = random_mixture(seed=30, k=3, d=d)
    rng = np.random.default_rng(rank)
    b = rng.normal(size=(d, rank))
    precision, center = b @ b.T, rng.normal(size=d)  # singular when rank < d, zero when rank = 0
    tilted, log_z = gmm.tilted(center, precision)
    x = rng.normal(size=(10, d)) * 2.0
    expected = gmm.log_prob(x) - 0.5 * np.einsum("ni,ij,nj->n", x - center, precision, x - center) - log_z
    np.testing.assert_allclose(tilted.log_prob(x), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jnp.sum(tilted.weights), 1.0, rtol=1e-14)
    if rank == 0:
        assert abs(float(log_z)) < 1e-14


def test_linear_tilt_density_is_exact():
    gmm = random_mixture(seed=31, k=3, d=3)
    direction = np.array([0.5, -1.0, 0.25])
    tilted, log_z = gmm.tilted_linear(direction)
    expected_log_z = logsumexp(np.log(gmm.weights) + gmm.means @ direction
                               + 0.5 * np.einsum("i,kij,j->k", direction, gmm.covs, direction))
    np.testing.assert_allclose(log_z, expected_log_z, rtol=1e-13)
    x = np.random.default_rng(2).normal(size=(10, 3))
    np.testing.assert_allclose(tilted.log_prob(x), gmm.log_prob(x) + x @ direction - log_z,
                               rtol=1e-10, atol=1e-10)


def test_jit_vmap_and_pytree():
    gmm, path = random_mixture(seed=40, k=2, d=3), paths.vp()
    x = np.random.default_rng(0).normal(size=(5, 3))
    t = jnp.linspace(0.1, 0.9, 5)
    score, _, velocity = closed_form(gmm, path, x, t)
    np.testing.assert_allclose(gmm.score(path)(x, t), score, rtol=1e-12)
    per_row = jax.jit(jax.vmap(gmm.velocity(path)))(x, t)  # each call sees x of shape (d,) and a scalar t
    np.testing.assert_allclose(per_row, velocity, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(gmm.score(path), in_axes=(0, None)))(x, t[2]),
                               gmm.score(path)(x, t[2]), rtol=1e-12)
    centers = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
    batched, log_z = jax.vmap(lambda c: gmm.tilted(c, jnp.eye(3)))(centers)
    assert batched.means.shape == (4, 2, 3) and log_z.shape == (4,)
    np.testing.assert_allclose(log_z[1], gmm.tilted(centers[1], jnp.eye(3))[1], rtol=1e-12)
    leaves, treedef = jax.tree.flatten(gmm)
    assert len(leaves) == 3 and jax.tree.unflatten(treedef, leaves).log_prob(x[0]) == gmm.log_prob(x[0])
    samples = jax.jit(lambda g, key: g.sample(key, 3))(gmm, jax.random.PRNGKey(0))
    assert samples.shape == (3, 3)


def test_no_float64_assumption():
    g64 = random_mixture(seed=41, k=2, d=3)
    g32 = GaussianMixture(*(jnp.asarray(a, jnp.float32) for a in (g64.weights, g64.means, g64.covs)))
    x, t = jnp.ones((4, 3), jnp.float32), jnp.float32(0.5)
    for method in ("score", "denoiser", "velocity"):
        assert jax.eval_shape(getattr(g32, method)(paths.linear()), x, t).dtype == jnp.float32
    assert jax.eval_shape(lambda k: g32.sample(k, 2), jax.random.PRNGKey(0)).dtype == jnp.float32
    assert jax.eval_shape(g32.log_prob, x).dtype == jnp.float32
    tilted, log_z = jax.eval_shape(g32.tilted, jnp.zeros(3, jnp.float32), jnp.eye(3, dtype=jnp.float32))
    assert tilted.covs.dtype == jnp.float32 and log_z.dtype == jnp.float32
    np.testing.assert_allclose(g32.score(paths.vp())(x, t), g64.score(paths.vp())(x, 0.5),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, argument", [
    ((np.ones((2, 1)) / 2, np.zeros((2, 2)), np.stack([np.eye(2)] * 2)), "weights"),
    ((np.ones(2) / 2, np.zeros((3, 2)), np.stack([np.eye(2)] * 2)), "means"),
    ((np.ones(2) / 2, np.zeros((2, 2)), np.stack([np.eye(3)] * 2)), "covs"),
    ((np.array([0.5, 0.6]), np.zeros((2, 2)), np.stack([np.eye(2)] * 2)), "sum to 1"),
    ((np.array([1.5, -0.5]), np.zeros((2, 2)), np.stack([np.eye(2)] * 2)), "nonnegative"),
    ((np.ones(2) / 2, np.zeros((2, 2)), np.stack([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])), "symmetric"),
])
def test_construction_validates(args, argument):
    with pytest.raises(ValueError, match=argument):
        GaussianMixture(*args)


def test_method_arguments_validated():
    gmm = random_mixture(seed=42, k=2, d=3)
    with pytest.raises(ValueError, match="n must be"):
        gmm.sample(jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., d\)"):
        gmm.log_prob(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="t must be a scalar or a"):
        gmm.score(paths.linear())(jnp.ones((4, 3)), jnp.ones(3) * 0.5)
    with pytest.raises(ValueError, match="t must be a scalar"):
        gmm.marginal(paths.linear(), jnp.ones(2) * 0.5)
    with pytest.raises(ValueError, match="center"):
        gmm.tilted(jnp.zeros(2), jnp.eye(3))
    with pytest.raises(ValueError, match="precision"):
        gmm.tilted(jnp.zeros(3), jnp.eye(2))
    with pytest.raises(ValueError, match="direction"):
        gmm.tilted_linear(jnp.zeros(4))
