"""Exact autoregressive conditionals of a smoothed state-space sequence: ground truth for AR distribution
smoothing (Meng et al. 2021, arXiv 2103.15089).

Smoothing levels y_k = x + σ_k ε_k of a sequence x of a :class:`LinearGaussianSSM` (σ_0 > σ_1 > ... ≥ 0),
nested so that each level is the next one with more noise: y_{k−1} = y_k + sqrt(σ_{k−1}² − σ_k²) η. All
levels are jointly Gaussian with x ~ N(μ, Σ): Cov(y_k) = Σ + σ_k² I and Cov(y_{k−1}, y_k) = Σ + σ_k² I.
An AR model of level k conditioned on level k − 1 draws token m of y_k from

    p(y_k[m] | y_k[<m], y_{k−1}) = N(b_{k,m} + W_{k,m} [y_{k−1}; y_k], C_{k,m} C_{k,m}ᵀ),

the Gaussian conditional (Bishop 2006, sec. 2.3.1) of the target coordinates on y_{k−1} and on the tokens
before m (W_{k,m} is zero on the rest; level 0 conditions on its own earlier tokens only). Drawing the
levels in turn, each token by token, samples y_K − 1 exactly; with σ_{K−1} = 0 that is x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.models.state_space import LinearGaussianSSM


def smoothing_levels(sigmas) -> np.ndarray:
    """``sigmas`` checked: a non-empty, strictly decreasing 1-D sequence of noise scales >= 0."""
    levels = np.asarray(sigmas, np.float64)
    if levels.ndim != 1 or levels.size == 0 or not np.all(np.isfinite(levels)) or (levels < 0).any():
        raise ValueError(f"sigmas must be a non-empty 1-D sequence of finite noise scales >= 0, got {sigmas!r}")
    if (np.diff(levels) >= 0).any():
        raise ValueError(f"sigmas must be strictly decreasing (noisiest level first), got {levels.tolist()}")
    return levels


class SmoothedSSM:
    """The exact AR conditionals of the smoothing levels ``sigmas`` of ``ssm``'s sequences of ``length``
    tokens (see the module docstring); tables computed once in float64.

    ``ar(noisier, tokens, level) -> (mean, scale_tril)``: ``noisier`` (batch, M, d) the previous level (any
    values for level 0), ``tokens`` (batch, M, d) the level being drawn (only tokens before each position
    are read), ``level`` (batch,) int; ``mean`` (batch, M, d) and ``scale_tril`` (batch, M, d, d) of every
    position's conditional, as a causal AR network would give them in one call.
    """

    def __init__(self, ssm: LinearGaussianSSM, sigmas, length: int):
        if not isinstance(ssm, LinearGaussianSSM):
            raise TypeError(f"ssm must be an itscale.models.LinearGaussianSSM, got {type(ssm).__name__}")
        self.ssm, self.sigmas = ssm, smoothing_levels(sigmas)
        self.length = checks.positive_int("length", length)
        mu = np.asarray(ssm.mean(length), np.float64).reshape(-1)
        sigma = self._covariance = np.asarray(ssm.covariance(length), np.float64)
        d, size = ssm.dim, mu.size
        weights = np.zeros((len(self.sigmas), length, d, 2 * size))
        offsets = np.zeros((len(self.sigmas), length, d))
        chols = np.zeros((len(self.sigmas), length, d, d))
        eye = np.eye(size)
        for k, s in enumerate(self.sigmas):
            noisier = self.sigmas[k - 1] if k else 0.0
            level_cov = sigma + s**2 * eye
            joint = np.block([[sigma + noisier**2 * eye, level_cov], [level_cov, level_cov]])
            for m in range(length):
                given = np.r_[np.arange(size) if k else np.arange(0), size + np.arange(m * d)]
                target = size + m * d + np.arange(d)
                gain = np.linalg.solve(joint[np.ix_(given, given)], joint[np.ix_(given, target)]).T
                weights[k, m][:, given] = gain
                offsets[k, m] = mu[m * d:(m + 1) * d] - gain @ np.r_[mu, mu][given]
                cond = joint[np.ix_(target, target)] - gain @ joint[np.ix_(given, target)]
                chols[k, m] = np.linalg.cholesky(0.5 * (cond + cond.T))
        dtype = jnp.result_type(ssm.initial_mean)
        self._tables = tuple(jnp.asarray(a, dtype) for a in (weights, offsets, chols))

    def level_covariance(self, level: int) -> np.ndarray:
        """(M d, M d) Cov(y_level) = Σ + σ_level² I."""
        return self._covariance + self.sigmas[level] ** 2 * np.eye(len(self._covariance))

    def ar(self, noisier, tokens, level):
        weights, offsets, chols = self._tables
        batch = tokens.shape[0]
        both = jnp.concatenate([noisier.reshape(batch, -1), tokens.reshape(batch, -1)], axis=1)
        level = jnp.broadcast_to(jnp.asarray(level), (batch,))
        mean = offsets[level] + jnp.einsum("bmdj,bj->bmd", weights[level], both.astype(weights.dtype))
        return mean.astype(tokens.dtype), chols[level].astype(tokens.dtype)
