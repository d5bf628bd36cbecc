"""Linear-Gaussian state-space model: exact ground truth for continuous sequences (both axes at once).

Token m of a sequence is the d-dimensional state x_m of

    x_0 ~ N(μ0, P0),    x_{m+1} = A x_m + w_m,  w_m ~ N(0, Q),    (optionally) y_m = C x_m + v_m, v_m ~ N(0, R).

A sequence of M tokens is jointly Gaussian (Kalman 1960; Särkkä 2013, "Bayesian Filtering and
Smoothing", ch. 4 and 8): E[x_m] = A^m μ0, Cov(x_m, x_n) = A^{m−n} P_n for m ≥ n with
P_{n+1} = A P_n Aᵀ + Q, and log p(x) = log N(x_0; μ0, P0) + Σ_m log N(x_{m+1}; A x_m, Q).

Noisy tokens z_m = α(t_m) x_m + σ(t_m) ε_m with per-token times t_m (x_t = α x0 + σ ε, t = 1 noise,
t = 0 data) are jointly Gaussian with x, so (Bishop 2006, sec. 2.3.1), with D = diag(α(t_m) ⊗ I_d),

    E[x | z] = μ + Σ D S⁻¹ (z − D μ),   Cov[x | z] = Σ − Σ D S⁻¹ D Σ,   S = D Σ D + diag(σ(t_m)² ⊗ I_d):

the exact denoiser of a sequence whose tokens carry different noise levels. :func:`kalman_filter` and
:func:`rts_smoother` (Rauch, Tung & Striebel 1965) compute the same laws by recursion over tokens, with
per-token observation matrices, and are the independent check of the dense formulas.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core.checks import positive_int
from itscale.paths.path import Path


def _gaussian_log_prob(residual, cov) -> jax.Array:
    """log N(residual; 0, cov) over the last axis; ``cov`` (k, k) positive definite."""
    chol = jnp.linalg.cholesky(cov)
    flat = residual.reshape(-1, residual.shape[-1])
    white = jax.scipy.linalg.solve_triangular(chol, flat.T, lower=True)
    half_log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    value = -0.5 * jnp.sum(white**2, axis=0) - half_log_det - 0.5 * cov.shape[-1] * math.log(2 * math.pi)
    return value.reshape(residual.shape[:-1])


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True, eq=False)
class LinearGaussianSSM:
    """x_{m+1} = A x_m + N(0, Q), x_0 ~ N(μ0, P0), optional y_m = C x_m + N(0, R); see the module docstring.

    ``transition`` A (d, d), ``noise_cov`` Q (d, d), ``initial_mean`` μ0 (d,), ``initial_cov`` P0 (d, d),
    ``observation`` C (p, d) and ``observation_cov`` R (p, p) (both or neither). A pytree of its arrays.
    Sequences are arrays (..., M, d): tokens on the second-to-last axis.
    """

    transition: jax.Array
    noise_cov: jax.Array
    initial_mean: jax.Array
    initial_cov: jax.Array
    observation: jax.Array | None = None
    observation_cov: jax.Array | None = None

    def __post_init__(self):
        d = jnp.shape(self.initial_mean)[-1] if jnp.ndim(self.initial_mean) == 1 else None
        if d is None:
            raise ValueError(f"initial_mean must have shape (d,), got {jnp.shape(self.initial_mean)}")
        for name in ("transition", "noise_cov", "initial_cov"):
            if jnp.shape(getattr(self, name)) != (d, d):
                raise ValueError(f"{name} must have shape (d, d) = ({d}, {d}), got {jnp.shape(getattr(self, name))}")
        if (self.observation is None) != (self.observation_cov is None):
            raise ValueError("observation and observation_cov must be given together (or neither)")
        if self.observation is not None:
            p = jnp.shape(self.observation)[0]
            if jnp.shape(self.observation) != (p, d) or jnp.shape(self.observation_cov) != (p, p):
                raise ValueError(f"observation must be (p, {d}) and observation_cov (p, p), got "
                                 f"{jnp.shape(self.observation)} and {jnp.shape(self.observation_cov)}")

    def tree_flatten_with_keys(self):
        names = [f.name for f in dataclasses.fields(self)]
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in names], None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def dim(self) -> int:
        return jnp.shape(self.initial_mean)[0]

    # ---- the exact law of a sequence -------------------------------------------------------------
    @functools.partial(jax.jit, static_argnames="length")
    def marginal_covs(self, length: int) -> jax.Array:
        """(M, d, d) P_m = Cov(x_m): P_0 = P0, P_{m+1} = A P_m Aᵀ + Q."""
        positive_int("length", length)
        a, q = self.transition, self.noise_cov

        def advance(p, _):
            return a @ p @ a.T + q, p

        return lax.scan(advance, self.initial_cov, None, length=length)[1]

    @functools.partial(jax.jit, static_argnames="length")
    def mean(self, length: int) -> jax.Array:
        """(M, d) E[x_m] = A^m μ0."""
        positive_int("length", length)
        return lax.scan(lambda m, _: (self.transition @ m, m), self.initial_mean, None, length=length)[1]

    @functools.partial(jax.jit, static_argnames="length")
    def covariance(self, length: int) -> jax.Array:
        """(M d, M d) Σ with blocks Σ_{mn} = A^{m−n} P_n (m ≥ n), Σ_{nm} = Σ_{mn}ᵀ; token-major order."""
        d, p = self.dim, self.marginal_covs(length)
        powers = lax.scan(lambda g, _: (self.transition @ g, g), jnp.eye(d, dtype=p.dtype), None,
                          length=length)[1]                                   # (M, d, d) A^k
        m, n = jnp.meshgrid(jnp.arange(length), jnp.arange(length), indexing="ij")
        lower = powers[jnp.abs(m - n)] @ p[jnp.minimum(m, n)]                  # A^{|m−n|} P_min
        blocks = jnp.where((m >= n)[..., None, None], lower, jnp.swapaxes(lower, -1, -2))
        return blocks.transpose(0, 2, 1, 3).reshape(length * d, length * d)

    @jax.jit
    def log_prob(self, x) -> jax.Array:
        """Exact log p(x) of sequences ``x`` (..., M, d) by the chain rule of the Markov chain."""
        first = _gaussian_log_prob(x[..., 0, :] - self.initial_mean, self.initial_cov)
        residual = x[..., 1:, :] - x[..., :-1, :] @ self.transition.T
        return first + jnp.sum(_gaussian_log_prob(residual, self.noise_cov), axis=-1)

    @functools.partial(jax.jit, static_argnames="length")
    def expected_log_prob(self, length: int) -> jax.Array:
        """E[log p(x)] = −½ d M (1 + log 2π) − ½ log det Σ (the negative entropy of the sequence law)."""
        size = length * self.dim
        return -0.5 * size * (1.0 + math.log(2 * math.pi)) - 0.5 * jnp.linalg.slogdet(self.covariance(length))[1]

    @functools.partial(jax.jit, static_argnames=("n", "length"))
    def sample(self, key, n: int, length: int) -> jax.Array:
        """(n, M, d) sequences drawn by running the chain."""
        positive_int("n", n)
        positive_int("length", length)
        dtype = jnp.result_type(self.initial_mean)
        noise = jax.random.normal(key, (length, n, self.dim), dtype)
        x0 = self.initial_mean + noise[0] @ jnp.linalg.cholesky(self.initial_cov).T
        q = jnp.linalg.cholesky(self.noise_cov)

        def advance(x, w):
            x = x @ self.transition.T + w @ q.T
            return x, x

        rest = lax.scan(advance, x0, noise[1:])[1]
        return jnp.concatenate([x0[None], rest]).swapaxes(0, 1)

    # ---- exact conditionals ----------------------------------------------------------------------
    def posterior(self, path: Path, z, t) -> tuple[jax.Array, jax.Array]:
        """``(E[x | z], Cov[x | z])`` for noisy tokens z_m = α(t_m) x_m + σ(t_m) ε_m.

        ``z`` (batch, M, d); ``t`` per-token times (M,) shared by the batch, or (batch, M). Returns the
        posterior mean (batch, M, d) and covariance (M d, M d) (or (batch, M d, M d) for per-row times).
        """
        t = jnp.asarray(t, z.dtype)
        return self._condition(z, path.alpha(t), path.sigma(t))

    def denoiser(self, path: Path) -> Callable:
        """``fn(z, t) -> E[x | z]``: the exact denoiser of a sequence with per-token times ``t`` ((M,) or
        (batch, M)) on ``path``; the perfect x̂₀ model of every sequence sampler."""
        return lambda z, t: self.posterior(path, z, t)[0]

    def conditional(self, x, observed) -> tuple[jax.Array, jax.Array]:
        """Exact law of the whole sequence given the tokens of ``x`` (batch, M, d) where ``observed``
        (bool (M,)) is True: ``(mean (batch, M, d), cov (M d, M d))``; α = 1, σ = 0 on observed tokens and
        α = 0, σ = 1 elsewhere in :meth:`posterior`'s formula."""
        seen = jnp.asarray(observed, x.dtype)
        return self._condition(x, seen, 1.0 - seen)

    def _condition(self, z, alpha, sigma_noise) -> tuple[jax.Array, jax.Array]:
        """Posterior of x given z = D_α x + D_σ ε, per-token scales ``alpha``/``sigma_noise`` (..., M)."""
        length, d = z.shape[-2], self.dim
        mu = self.mean(length).reshape(-1).astype(z.dtype)
        sigma = self.covariance(length).astype(z.dtype)
        a = jnp.repeat(alpha, d, axis=-1)                                     # (..., M d)
        s = jnp.repeat(sigma_noise, d, axis=-1)
        gram = a[..., :, None] * sigma * a[..., None, :] + jnp.eye(length * d, dtype=z.dtype) * s[..., None] ** 2
        cross = sigma * a[..., None, :]                                        # Σ D
        gain = jnp.swapaxes(jnp.linalg.solve(gram, jnp.swapaxes(cross, -1, -2)), -1, -2)   # Σ D S⁻¹
        innovation = z.reshape(z.shape[0], -1) - a * mu
        if a.ndim == 1:
            mean = mu + innovation @ gain.T
        else:
            mean = mu + jnp.einsum("bij,bj->bi", gain, innovation)
        return mean.reshape(z.shape), sigma - gain @ jnp.swapaxes(cross, -1, -2)

    # ---- observations -----------------------------------------------------------------------------
    def observed_mean(self, length: int) -> jax.Array:
        """(M, p) E[y_m] = C A^m μ0."""
        return self.mean(length) @ self.observation.T

    def observed_covariance(self, length: int) -> jax.Array:
        """(M p, M p) Cov(y) = (I ⊗ C) Σ (I ⊗ C)ᵀ + I ⊗ R."""
        lift = jnp.kron(jnp.eye(length), self.observation)
        return lift @ self.covariance(length) @ lift.T + jnp.kron(jnp.eye(length), self.observation_cov)


class Filtered(NamedTuple):
    """Kalman filter output for one sequence: filtered means (M, d), covariances (M, d, d), predicted
    means/covariances (M, d), (M, d, d) (before token m's observation), and log p(y_{0:M−1})."""

    means: jax.Array
    covs: jax.Array
    predicted_means: jax.Array
    predicted_covs: jax.Array
    log_likelihood: jax.Array


def _per_token(value, length):
    return jnp.broadcast_to(value, (length,) + jnp.shape(value)[-2:])


def kalman_filter(model: LinearGaussianSSM, y, observation=None, observation_cov=None) -> Filtered:
    """Kalman filter of one observed sequence ``y`` (M, p) (Särkkä 2013, Thm 4.2).

    ``observation``/``observation_cov``: per-token C_m (M, p, d) / R_m (M, p, p) or shared (p, d) /
    (p, p); default the model's. R_m may be singular where C_m P C_mᵀ + R_m is not.
    """
    length = y.shape[0]
    c = _per_token(model.observation if observation is None else observation, length)
    r = _per_token(model.observation_cov if observation_cov is None else observation_cov, length)
    a, q = model.transition, model.noise_cov

    def update(carry, inputs):
        m_pred, p_pred = carry
        y_m, c_m, r_m = inputs
        s = c_m @ p_pred @ c_m.T + r_m
        gain = jnp.linalg.solve(s, c_m @ p_pred).T
        residual = y_m - c_m @ m_pred
        m, p = m_pred + gain @ residual, p_pred - gain @ s @ gain.T
        out = (m, p, m_pred, p_pred, _gaussian_log_prob(residual, s))
        return (a @ m, a @ p @ a.T + q), out

    _, (means, covs, pm, pp, logs) = lax.scan(update, (model.initial_mean, model.initial_cov), (y, c, r))
    return Filtered(means, covs, pm, pp, jnp.sum(logs))


def rts_smoother(model: LinearGaussianSSM, filtered: Filtered) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rauch–Tung–Striebel smoother (Särkkä 2013, Thm 8.2): ``(means (M, d), covs (M, d, d), lag_covs
    (M − 1, d, d))`` of p(x_m | y), with lag_covs[m] = Cov(x_{m+1}, x_m | y)."""
    a = model.transition

    def back(carry, inputs):
        m_next, p_next = carry
        m, p, m_pred_next, p_pred_next = inputs
        gain = jnp.linalg.solve(p_pred_next, a @ p).T                         # J_m = P_m Aᵀ P_{m+1|m}⁻¹
        m_s = m + gain @ (m_next - m_pred_next)
        p_s = p + gain @ (p_next - p_pred_next) @ gain.T
        return (m_s, p_s), (m_s, p_s, p_next @ gain.T)

    last = (filtered.means[-1], filtered.covs[-1])
    inputs = (filtered.means[:-1], filtered.covs[:-1], filtered.predicted_means[1:], filtered.predicted_covs[1:])
    _, (means, covs, lags) = lax.scan(back, last, inputs, reverse=True)
    return (jnp.concatenate([means, last[0][None]]), jnp.concatenate([covs, last[1][None]]), lags)
