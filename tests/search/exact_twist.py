"""The exact twist log E[exp(λ r(x_0)) | x_t] of a Gaussian mixture under a quadratic reward.

For p = Σ_k w_k N(μ_k, Σ_k) and x_t = α x_0 + σ ε, given x_t the data x_0 is a Gaussian mixture with
responsibilities π_k ∝ w_k N(x_t; α μ_k, C_k), C_k = α² Σ_k + σ² I, means m_k = μ_k + α Σ_k C_k⁻¹ (x_t − α μ_k)
and covariances V_k = Σ_k − α² Σ_k C_k⁻¹ Σ_k (Bishop 2006, sec. 2.3.3). For r(x) = −½ (x − c)ᵀ A (x − c)
and λ ≥ 0, exp(λ r) is the tilt of precision λ A, so E[exp(λ r(x_0)) | x_t] is the normaliser of that
posterior mixture tilted by (c, λ A): ``GaussianMixture(π, m, V).tilted(c, λ A)[1]`` (closed form).
It is the optimal twist of Wu et al. 2023 (arXiv 2306.17775, eq. 5) for the continuous-time process.

:func:`problem`: the mixture and mild tilt of ``test_smc_exact.py``, shared by ``test_twisted.py`` and
``test_smc_normalizer.py`` (built on first use, after the tests switch on float64).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

import itscale as its
from tests.search import gmm_samplers



class Problem(NamedTuple):
    gmm: its.models.GaussianMixture
    center: jax.Array
    precision: jax.Array
    reward: object          # r(x) = -0.5 (x - c)^T A (x - c)
    path: object


@functools.cache
def problem() -> Problem:
    gmm = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                     jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
    center, precision = jnp.array([-0.5, 0.5]), jnp.array([[1.6, 0.4], [0.4, 1.0]])
    return Problem(gmm, center, precision, gmm_samplers.quadratic_reward(center, precision),
                   its.paths.linear())


def exact_log_twist(gmm, path, center, precision):
    """``log_twist(x, t, x0_hat, lam) -> (N,)`` for ``its.search.twisted_smc`` (x of shape (N, d), t a
    scalar with sigma(t) > 0)."""
    center, precision = jnp.asarray(center), jnp.asarray(precision)

    def one(x, t, lam):
        alpha, sigma = path.alpha(t), path.sigma(t)
        eye = jnp.eye(gmm.dim, dtype=x.dtype)
        c = alpha**2 * gmm.covs + sigma**2 * eye                                     # (K, d, d)
        gain = alpha * jnp.swapaxes(jnp.linalg.solve(c, gmm.covs), 1, 2)           # α Σ_k C_k⁻¹
        log_resp = jnp.log(gmm.weights) + jax.vmap(
            lambda m, cov: jax.scipy.stats.multivariate_normal.logpdf(x, m, cov))(alpha * gmm.means, c)
        means = gmm.means + jnp.einsum("kij,kj->ki", gain, x - alpha * gmm.means)
        covs = gmm.covs - alpha * gain @ gmm.covs
        covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2))
        posterior = its.models.GaussianMixture(jax.nn.softmax(log_resp), means, covs)
        return posterior.tilted(center, lam * precision)[1]

    def log_twist(x, t, x0_hat, lam):
        return jax.vmap(one, in_axes=(0, None, None))(x, t, lam)

    return log_twist
