"""The linear-Gaussian state-space model's exact sequence law, checked three independent ways.

The dense mean/covariance (A^m μ0, A^{m−n} P_n) against the chain written as an explicit linear map
of independent Gaussians, against the Kalman filter/RTS smoother (uninformative observations give
the prior moments back; informative ones give the dense Gaussian conditional) and against draws of
the chain. The exact denoiser of tokens with different noise levels against brute-force conditioning
of the joint (x, z) law in numpy and against the RTS smoother with per-token observations
C_m = α(t_m) I, R_m = σ(t_m)² I.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.models.state_space import LinearGaussianSSM, kalman_filter, rts_smoother

jax.config.update("jax_enable_x64", True)

D, M = 2, 4
A = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q = np.array([[0.3, 0.05], [0.05, 0.2]])
MU0 = np.array([1.0, -0.5])
P0 = np.array([[0.5, 0.1], [0.1, 0.4]])
C = np.array([[1.0, 0.5]])
R = np.array([[0.2]])
SSM = LinearGaussianSSM(jnp.asarray(A), jnp.asarray(Q), jnp.asarray(MU0), jnp.asarray(P0), jnp.asarray(C), jnp.asarray(R))
PATH = its.paths.linear()


def linear_map_law():
    """x = μ + G ξ with ξ = (x_0 − μ0, w_0, …, w_{M−2}) independent: G_{mn} = A^{m−n} (m ≥ n)."""
    g = np.zeros((M * D, M * D))
    for m in range(M):
        for n in range(m + 1):
            g[m * D:(m + 1) * D, n * D:(n + 1) * D] = np.linalg.matrix_power(A, m - n)
    blocks = np.zeros((M * D, M * D))
    for n in range(M):
        blocks[n * D:(n + 1) * D, n * D:(n + 1) * D] = P0 if n == 0 else Q
    mean = np.concatenate([np.linalg.matrix_power(A, m) @ MU0 for m in range(M)])
    return mean, g @ blocks @ g.T


def condition(mean_x, cov_x, cross, mean_y, cov_y, y):
    """E[x | y], Cov[x | y] of a joint Gaussian, by numpy's generic solve."""
    gain = np.linalg.solve(cov_y, cross.T).T
    return mean_x + (y - mean_y) @ gain.T, cov_x - gain @ cross.T


def test_sequence_law_is_the_chain_as_a_linear_map():
    mean, cov = linear_map_law()
    np.testing.assert_allclose(np.asarray(SSM.mean(M)).reshape(-1), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(SSM.covariance(M)), cov, rtol=1e-12, atol=1e-12)


def test_log_prob_is_the_dense_gaussian_and_its_expectation_is_the_negative_entropy():
    x = SSM.sample(jax.random.key(0), 40000, M)
    mean, cov = linear_map_law()
    dense = jax.scipy.stats.multivariate_normal.logpdf(x[:50].reshape(50, -1), mean, cov)
    np.testing.assert_allclose(np.asarray(SSM.log_prob(x[:50])), np.asarray(dense), rtol=1e-12, atol=1e-10)
    expected = -0.5 * M * D * (1 + math.log(2 * math.pi)) - 0.5 * np.linalg.slogdet(cov)[1]
    np.testing.assert_allclose(float(SSM.expected_log_prob(M)), expected, rtol=1e-12)
    log_probs = np.asarray(SSM.log_prob(x))
    assert abs(log_probs.mean() - expected) < 4 * log_probs.std() / math.sqrt(len(log_probs))
    flat = np.asarray(x).reshape(len(x), -1)
    se = np.sqrt(np.diag(cov) / len(x))
    assert np.all(np.abs(flat.mean(0) - mean) < 4.5 * se)
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(x))
    assert np.all(np.abs(np.cov(flat.T) - cov) < 4.5 * cov_se)


def test_uninformative_kalman_smoother_returns_the_prior_moments():
    blind = np.zeros((1, D))
    filtered = kalman_filter(SSM, jnp.zeros((M, 1)), jnp.asarray(blind), jnp.eye(1))
    means, covs, lags = rts_smoother(SSM, filtered)
    cov = np.asarray(SSM.covariance(M))
    np.testing.assert_allclose(np.asarray(means), np.asarray(SSM.mean(M)), atol=1e-12)
    for m in range(M):
        np.testing.assert_allclose(np.asarray(covs[m]), cov[m * D:(m + 1) * D, m * D:(m + 1) * D], atol=1e-12)
    for m in range(M - 1):
        np.testing.assert_allclose(np.asarray(lags[m]), cov[(m + 1) * D:(m + 2) * D, m * D:(m + 1) * D], atol=1e-12)
    assert float(filtered.log_likelihood) == pytest.approx(M * -0.5 * math.log(2 * math.pi), abs=1e-12)


def test_kalman_likelihood_and_smoother_equal_dense_conditioning_on_observations():
    x = SSM.sample(jax.random.key(1), 3, M)
    mean, cov = linear_map_law()
    lift = np.kron(np.eye(M), C)
    cov_y = lift @ cov @ lift.T + np.kron(np.eye(M), R)
    np.testing.assert_allclose(np.asarray(SSM.observed_covariance(M)), cov_y, atol=1e-12)
    for row in np.asarray(x):
        y = row @ C.T + 0.3
        filtered = kalman_filter(SSM, jnp.asarray(y))
        dense = jax.scipy.stats.multivariate_normal.logpdf(y.reshape(-1), lift @ mean, cov_y)
        assert float(filtered.log_likelihood) == pytest.approx(float(dense), abs=1e-10)
        post_mean, post_cov = condition(mean, cov, cov @ lift.T, lift @ mean, cov_y, y.reshape(-1))
        means, covs, lags = rts_smoother(SSM, filtered)
        np.testing.assert_allclose(np.asarray(means).reshape(-1), post_mean, atol=1e-10)
        for m in range(M):
            np.testing.assert_allclose(np.asarray(covs[m]), post_cov[m * D:(m + 1) * D, m * D:(m + 1) * D], atol=1e-10)
        for m in range(M - 1):
            np.testing.assert_allclose(np.asarray(lags[m]), post_cov[(m + 1) * D:(m + 2) * D, m * D:(m + 1) * D],
                                       atol=1e-10)


TIMES = np.array([0.0, 0.35, 0.8, 1.0])        # a clean token, two noisy ones, one of pure noise


def noisy(seed, times, n=5):
    x = SSM.sample(jax.random.key(seed), n, M)
    eps = jax.random.normal(jax.random.key(seed + 100), x.shape, x.dtype)
    t = jnp.asarray(times)[..., None]
    return x, PATH.alpha(t) * x + PATH.sigma(t) * eps


def test_exact_denoiser_equals_brute_force_conditioning_of_the_joint_law():
    _, z = noisy(2, TIMES)
    mean, cov = linear_map_law()
    a = np.repeat(1.0 - TIMES, D)
    s = np.repeat(TIMES, D)
    cov_z = np.diag(a) @ cov @ np.diag(a) + np.diag(s**2)
    post_mean, post_cov = condition(mean, cov, cov @ np.diag(a), a * mean, cov_z, np.asarray(z).reshape(len(z), -1))
    got_mean, got_cov = SSM.posterior(PATH, z, jnp.asarray(TIMES))
    np.testing.assert_allclose(np.asarray(got_mean).reshape(len(z), -1), post_mean, atol=1e-10)
    np.testing.assert_allclose(np.asarray(got_cov), post_cov, atol=1e-10)
    np.testing.assert_allclose(np.asarray(got_mean)[:, 0], np.asarray(z)[:, 0], atol=1e-12)   # t = 0: exact
    np.testing.assert_allclose(np.asarray(SSM.denoiser(PATH)(z, jnp.asarray(TIMES))), np.asarray(got_mean))


def test_exact_denoiser_equals_the_smoother_with_per_token_observations():
    _, z = noisy(3, TIMES)
    c = jnp.asarray((1.0 - TIMES)[:, None, None] * np.eye(D))
    r = jnp.asarray((TIMES**2)[:, None, None] * np.eye(D))
    mean, cov = SSM.posterior(PATH, z, jnp.asarray(TIMES))
    for row, row_mean in zip(np.asarray(z), np.asarray(mean)):
        means, covs, _ = rts_smoother(SSM, kalman_filter(SSM, jnp.asarray(row), c, r))
        np.testing.assert_allclose(np.asarray(means), row_mean, atol=1e-10)
        for m in range(M):
            np.testing.assert_allclose(np.asarray(covs[m]), np.asarray(cov)[m * D:(m + 1) * D, m * D:(m + 1) * D],
                                       atol=1e-10)


def test_per_row_times_equal_shared_times_row_by_row():
    rows = np.array([TIMES, TIMES[::-1], [0.5, 0.5, 0.5, 0.5]])
    _, z = noisy(4, rows, n=3)
    mean, cov = SSM.posterior(PATH, z, jnp.asarray(rows))
    assert cov.shape == (3, M * D, M * D)
    for i in range(3):
        row_mean, row_cov = SSM.posterior(PATH, z[i:i + 1], jnp.asarray(rows[i]))
        np.testing.assert_allclose(np.asarray(mean[i]), np.asarray(row_mean[0]), atol=1e-12)
        np.testing.assert_allclose(np.asarray(cov[i]), np.asarray(row_cov), atol=1e-12)


def test_conditional_on_observed_tokens_keeps_them_and_matches_dense_conditioning():
    x, _ = noisy(5, TIMES)
    observed = np.array([True, False, True, False])
    mean, cov = SSM.conditional(x, observed)
    full_mean, full_cov = linear_map_law()
    seen = np.repeat(observed, D)
    flat = np.asarray(x).reshape(len(x), -1)
    hidden_mean, hidden_cov = condition(full_mean[~seen], full_cov[np.ix_(~seen, ~seen)], full_cov[np.ix_(~seen, seen)],
                                        full_mean[seen], full_cov[np.ix_(seen, seen)], flat[:, seen])
    got = np.asarray(mean).reshape(len(x), -1)
    np.testing.assert_allclose(got[:, seen], flat[:, seen], atol=1e-12)
    np.testing.assert_allclose(got[:, ~seen], hidden_mean, atol=1e-10)
    np.testing.assert_allclose(np.asarray(cov)[np.ix_(~seen, ~seen)], hidden_cov, atol=1e-10)
    np.testing.assert_allclose(np.asarray(cov)[seen], 0.0, atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="transition"):
        LinearGaussianSSM(jnp.eye(3), jnp.asarray(Q), jnp.asarray(MU0), jnp.asarray(P0))
    with pytest.raises(ValueError, match="together"):
        LinearGaussianSSM(jnp.asarray(A), jnp.asarray(Q), jnp.asarray(MU0), jnp.asarray(P0), jnp.asarray(C))
    with pytest.raises(ValueError, match="length"):
        SSM.covariance(0)
