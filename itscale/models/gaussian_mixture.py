"""Gaussian mixtures: exact ground truth for samplers, scores, velocities and reward tilts.

p(x) = sum_k w_k N(x; mu_k, Sigma_k). Under a path x_t = alpha x0 + sigma eps every component stays
Gaussian, x_t | k ~ N(alpha mu_k, C_k) with C_k = alpha^2 Sigma_k + sigma^2 I, so the marginal
score, the posterior mean E[x0 | x_t] and the velocity are available in closed form (Bishop 2006,
sec. 2.3.3 for Gaussian conditioning; Tweedie / Efron 2011 for score <-> denoiser).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from itscale.core import checks
from itscale.core.checks import positive_int
from itscale.paths.path import Path, as_float


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A K-component Gaussian mixture in d dimensions with full covariances.

    ``weights`` (K,) nonnegative summing to 1, ``means`` (K, d), ``covs`` (K, d, d) symmetric positive
    definite. A pytree (leaves: the three arrays), so it passes through ``jit``, ``vmap`` and ``scan``;
    shapes are checked at construction, values (weights sum, symmetry) when they are concrete.
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    def __post_init__(self):
        arrays = [jnp.asarray(a) for a in (self.weights, self.means, self.covs)]
        dtype = jnp.result_type(*arrays, float)
        weights, means, covs = (a.astype(dtype) for a in arrays)
        if weights.ndim != 1:
            raise ValueError(f"weights must have shape (K,), got {weights.shape}")
        k = weights.shape[0]
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(f"means must have shape (K, d) = ({k}, d) to match weights, got {means.shape}")
        d = means.shape[1]
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape (K, d, d) = ({k}, {d}, {d}), got {covs.shape}")
        if _is_concrete(weights, covs):
            tol = math.sqrt(jnp.finfo(dtype).eps)
            w = np.asarray(weights)
            if np.any(w < 0) or abs(w.sum() - 1.0) > tol:
                raise ValueError(f"weights must be nonnegative and sum to 1 (within {tol:.1e}), got sum "
                                 f"{w.sum()} and minimum {w.min()}")
            c = np.asarray(covs)
            if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=tol, atol=tol * np.abs(c).max()):
                raise ValueError("covs must be symmetric (covs[k] == covs[k].T)")
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            object.__setattr__(self, name, value)

    def tree_flatten_with_keys(self):
        keys = (jax.tree_util.GetAttrKey(n) for n in ("weights", "means", "covs"))
        return tuple(zip(keys, (self.weights, self.means, self.covs))), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Rebuild without validation: transformations pass placeholders and batched leaves through here."""
        obj = object.__new__(cls)
        for name, value in zip(("weights", "means", "covs"), children):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # ----------------------------------------------------------------------------------------- moments
    def mean(self) -> jax.Array:
        """E[x] = sum_k w_k mu_k."""
        return self.weights @ self.means

    def covariance(self) -> jax.Array:
        """Cov[x] = sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T)."""
        centered = self.means - self.mean()
        return jnp.einsum("k,kij->ij", self.weights, self.covs + centered[:, :, None] * centered[:, None, :])

    # ---------------------------------------------------------------------------- sampling and density
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` independent draws, shape (n, d): k ~ Categorical(w), x = mu_k + L_k z with
        L_k L_k^T = Sigma_k."""
        return self._sample(key, positive_int("n", n))

    @functools.partial(jax.jit, static_argnums=2)
    def _sample(self, key, n):
        key_component, key_noise = jax.random.split(key)
        component = jax.random.categorical(key_component, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(key_noise, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        if self.num_components <= self.dim:  # L_k z for every k, (n, K, d), is smaller than gathering L_k
            every = jnp.einsum("kij,nj->nki", chol, z)
            noise = jnp.take_along_axis(every, component[:, None, None], axis=1)[:, 0]
        else:
            noise = jnp.einsum("nij,nj->ni", chol[component], z)
        return self.means[component] + noise

    @jax.jit
    def log_prob(self, x) -> jax.Array:
        """log p(x) for x of shape (..., d): logsumexp_k [log w_k + log N(x; mu_k, Sigma_k)] via Cholesky."""
        x = jnp.asarray(x)
        self._check_state("x", x)
        flat = x.reshape(-1, self.dim)
        chol = jnp.linalg.cholesky(self.covs)                                        # (K, d, d)
        diff = jnp.swapaxes(flat[None, :, :] - self.means[:, None, :], 1, 2)         # (K, d, N)
        white = solve_triangular(chol, diff, lower=True)                            # (K, d, N)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=1)
        log_normal = -0.5 * (jnp.sum(white**2, axis=1) + log_det[:, None] + self.dim * math.log(2 * math.pi))
        return logsumexp(jnp.log(self.weights)[:, None] + log_normal, axis=0).reshape(x.shape[:-1])

    # ------------------------------------------------------------------------------ along a noising path
    def marginal(self, path: Path, t) -> GaussianMixture:
        """The law of x_t = alpha(t) x0 + sigma(t) eps for a scalar t: means alpha mu_k,
        covariances alpha^2 Sigma_k + sigma^2 I."""
        t = as_float(t)
        if t.ndim != 0:
            raise ValueError(f"t must be a scalar for marginal(); got shape {t.shape} "
                             f"(use vmap for many times)")
        alpha, sigma = path.alpha(t), path.sigma(t)
        covs = alpha**2 * self.covs + sigma**2 * jnp.eye(self.dim, dtype=self.covs.dtype)
        return self._unchecked(self.weights, alpha * self.means, covs)

    def score(self, path: Path) -> Callable:
        """fn(x, t) = grad_x log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - alpha mu_k), r_k the posterior
        responsibilities of the components given x_t."""
        return self._posterior_fn(path, "score")

    def denoiser(self, path: Path) -> Callable:
        """fn(x, t) = E[x0 | x_t = x] = sum_k r_k(x) (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k))."""
        return self._posterior_fn(path, "x0")

    def velocity(self, path: Path) -> Callable:
        """fn(x, t) = alpha_dot E[x0 | x_t] + sigma_dot E[eps | x_t], with E[eps | x_t] = -sigma score."""
        return self._posterior_fn(path, "velocity")

    def _posterior_fn(self, path: Path, quantity: str) -> Callable:
        """fn(x, t) for x (..., d) and t a scalar, or x (batch, d) and t (batch,). The eigendecomposition
        Sigma_k = U diag(lam) U^T is made once, here; it gives
        C_k^{-1} = U diag(1 / (alpha^2 lam + sigma^2)) U^T for every t."""
        checks.path("path", path)
        return functools.partial(_posterior, self, _eigh(self.covs), path, quantity)

    # ------------------------------------------------------------------------------------------ tilts
    @jax.jit
    def tilted(self, center, precision) -> tuple[GaussianMixture, jax.Array]:
        """p(x) exp(-0.5 (x - c)^T A (x - c)) / Z exactly, and log Z = log E_p[exp(-0.5 (x - c)^T A (x - c))].

        Per component, with Sigma = L L^T, S = I + L^T A L (valid for any PSD A, even singular),
        delta = mu - c, b = L^T A delta: log Z_k = -0.5 log|S| + 0.5 b^T S^{-1} b - 0.5 delta^T A delta,
        Sigma' = L S^{-1} L^T and mu' = mu - L S^{-1} b; w'_k = w_k Z_k / Z and
        log Z = logsumexp(log w + log Z_k).
        """
        center, precision = jnp.asarray(center), jnp.asarray(precision)
        if center.shape != (self.dim,):
            raise ValueError(f"center must have shape (d,) = ({self.dim},), got {center.shape}")
        if precision.shape != (self.dim, self.dim):
            raise ValueError(f"precision must have shape (d, d) = ({self.dim}, {self.dim}), "
                             f"got {precision.shape}")
        dtype = jnp.result_type(self.means, center, precision)
        eye = jnp.eye(self.dim, dtype=dtype)
        chol = jnp.linalg.cholesky(self.covs.astype(dtype))                           # (K, d, d)
        s_chol = jnp.linalg.cholesky(eye + jnp.swapaxes(chol, 1, 2) @ precision @ chol)  # (K, d, d)
        delta = self.means - center                                                 # (K, d)
        b = jnp.einsum("kji,jl,kl->ki", chol, precision, delta)                      # L^T A delta
        s_inv_b = jax.vmap(jax.scipy.linalg.cho_solve, in_axes=((0, None), 0))((s_chol, True), b)
        log_det_s = 2.0 * jnp.sum(jnp.log(jnp.diagonal(s_chol, axis1=1, axis2=2)), axis=1)
        log_z_k = -0.5 * log_det_s + 0.5 * jnp.sum(b * s_inv_b, axis=1) - 0.5 * jnp.einsum(
            "ki,ij,kj->k", delta, precision, delta)
        s_chol_inv_lt = solve_triangular(s_chol, jnp.swapaxes(chol, 1, 2), lower=True)  # R^{-1} L^T
        factor = jnp.swapaxes(s_chol_inv_lt, 1, 2)                                       # L R^{-T}
        covs = factor @ jnp.swapaxes(factor, 1, 2)
        means = self.means - jnp.einsum("kij,kj->ki", chol, s_inv_b)
        return self._reweighted(log_z_k, means, covs)

    @jax.jit
    def tilted_linear(self, direction) -> tuple[GaussianMixture, jax.Array]:
        """p(x) exp(b^T x) / Z exactly: components N(mu_k + Sigma_k b, Sigma_k) with log Z_k = b^T mu_k +
        0.5 b^T Sigma_k b, and log Z = logsumexp_k(log w_k + log Z_k)."""
        direction = jnp.asarray(direction)
        if direction.shape != (self.dim,):
            raise ValueError(f"direction must have shape (d,) = ({self.dim},), got {direction.shape}")
        shift = jnp.einsum("kij,j->ki", self.covs, direction)
        log_z_k = self.means @ direction + 0.5 * shift @ direction
        return self._reweighted(log_z_k, self.means + shift, self.covs)

    def _reweighted(self, log_z_k, means, covs):
        log_joint = jnp.log(self.weights) + log_z_k
        log_z = logsumexp(log_joint)
        return self._unchecked(jnp.exp(log_joint - log_z), means, covs), log_z

    @classmethod
    def _unchecked(cls, weights, means, covs) -> GaussianMixture:
        return cls.tree_unflatten(None, (weights, means, covs))

    def _check_state(self, name, x):
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., d) = (..., {self.dim}), got {x.shape}")


_eigh = jax.jit(jnp.linalg.eigh)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _posterior(gmm: GaussianMixture, spectrum, path: Path, quantity: str, x, t) -> jax.Array:
    """score, E[x0 | x_t] or the velocity at (x, t); see ``GaussianMixture.score`` for the formulas."""
    eigvals, eigvecs = spectrum                                                       # (K, d), (K, d, d)
    x, t = jnp.asarray(x), as_float(t)
    gmm._check_state("x", x)
    if t.ndim > 1 or (t.ndim == 1 and not (x.ndim == 2 and x.shape[0] == t.shape[0])):
        raise ValueError(f"t must be a scalar or a (batch,) vector with x of shape (batch, {gmm.dim}); "
                         f"got t of shape {t.shape} and x of shape {x.shape}")
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.result_type(gmm.means)
    dtype = jnp.result_type(out_dtype, gmm.means)
    t = jnp.reshape(t, (-1, 1, 1)).astype(dtype)                                     # (N or 1, 1, 1)
    alpha, sigma = path.alpha(t), path.sigma(t)
    diff = x.reshape(-1, gmm.dim).astype(dtype)[:, None, :] - alpha * gmm.means       # (N, K, d)
    rotated = jnp.einsum("kji,nkj->nki", eigvecs, diff)                               # U^T diff
    variances = alpha**2 * eigvals + sigma**2                                         # (N or 1, K, d)
    log_lik = -0.5 * jnp.sum(rotated**2 / variances + jnp.log(variances), axis=-1)
    resp = jax.nn.softmax(jnp.log(gmm.weights) + log_lik, axis=-1)                   # (N, K)
    score = -jnp.einsum("nk,kij,nkj->ni", resp, eigvecs, rotated / variances)        # -sum_k r_k C_k^-1 diff
    gain = jnp.einsum("nk,kij,nkj->ni", resp, eigvecs, eigvals * rotated / variances)  # Sigma_k C_k^-1 diff
    x0 = resp @ gmm.means + alpha[:, 0] * gain
    if quantity == "score":
        out = score
    elif quantity == "x0":
        out = x0
    else:
        out = path.alpha_dot(t[:, 0]) * x0 - path.sigma_dot(t[:, 0]) * sigma[:, 0] * score
    return out.reshape(x.shape).astype(out_dtype)
