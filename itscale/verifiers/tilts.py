"""Rewards whose tilt of a Gaussian mixture is known exactly: ground truth for reward-guided search.

For a reward r and a scale λ the target of a search is the tilted law p_λ(x) = p(x) exp(λ r(x)) / Z with
Z = E_p[exp(λ r(x))]. For a Gaussian mixture p and

* the quadratic reward r(x) = −½ (x − c)ᵀ A (x − c) (A symmetric positive semi-definite), p_λ is the
  mixture ``gmm.tilted(c, λ A)`` (:meth:`itscale.models.GaussianMixture.tilted`);
* the linear reward r(x) = bᵀ x, p_λ is the mixture ``gmm.tilted_linear(λ b)``: each component
  N(μ_k + λ Σ_k b, Σ_k) with log Z_k = λ bᵀ μ_k + ½ λ² bᵀ Σ_k b
  (:meth:`itscale.models.GaussianMixture.tilted_linear`);

both with log Z in closed form (Bishop 2006, sec. 2.3.3). A :class:`Tilt` pairs the reward with that law.
``reward_fn`` is r itself (unscaled): a search takes λ as its own traced hyper-parameter, so
``smc(sampler, tilt.reward_fn, ...)`` run with ``lam = tilt.scale`` targets ``tilt.tilted(gmm)``.
Rewards map x (batch, d) -> (batch,) row by row (order preserving), are pure and jit-able, and can be
wrapped with ``itscale.core.counting.counted(..., kind="verifier")``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.models.gaussian_mixture import GaussianMixture


class Tilt(NamedTuple):
    """A reward r and its exact tilt of Gaussian mixtures.

    reward_fn: x (batch, d) -> r(x) (batch,). scale: λ (a number or a traced scalar). law:
    ``law(gmm, lam) -> (GaussianMixture, log Z)`` for p(x) exp(lam r(x)) / Z.
    """

    reward_fn: Callable[[jax.Array], jax.Array]
    scale: Any
    law: Callable[[GaussianMixture, Any], tuple[GaussianMixture, jax.Array]]

    def tilted(self, gmm: GaussianMixture, scale=None) -> tuple[GaussianMixture, jax.Array]:
        """The law p(x) exp(λ r(x)) / Z and log Z = log E_p[exp(λ r(x))], λ = ``scale`` or ``self.scale``."""
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"gmm must be an itscale.models.GaussianMixture, got {type(gmm).__name__}")
        return self.law(gmm, self.scale if scale is None else scale)


def quadratic_tilt(center, precision, scale=1.0) -> Tilt:
    """r(x) = −½ (x − c)ᵀ A (x − c), tilted law ``gmm.tilted(c, λ A)``; A symmetric PSD, λ >= 0."""
    center = _vector("center", center)
    precision = jnp.asarray(precision)
    if not jnp.issubdtype(precision.dtype, jnp.floating):
        precision = precision.astype(center.dtype)
    d = center.shape[0]
    if precision.shape != (d, d):
        raise ValueError(f"precision must have shape (d, d) = ({d}, {d}) to match center, "
                         f"got {precision.shape}")
    if not isinstance(precision, jax.core.Tracer):
        a = np.asarray(precision, dtype=float)
        tol = 1e-6 * max(1.0, float(np.abs(a).max()))
        if not np.all(np.isfinite(a)) or not np.allclose(a, a.T, rtol=0.0, atol=tol):
            raise ValueError("precision must be a finite symmetric matrix (precision == precision.T)")
        if np.linalg.eigvalsh(a).min() < -tol:
            raise ValueError("precision must be positive semi-definite (its smallest eigenvalue is "
                             f"{np.linalg.eigvalsh(a).min():.3g})")
    _scale("scale", scale, minimum=0.0)
    reward = functools.partial(_quadratic_reward, center, precision)

    def law(gmm, lam):
        _same_dim(gmm, d)
        _scale("scale", lam, minimum=0.0)
        return gmm.tilted(center, jnp.asarray(lam, precision.dtype) * precision)

    return Tilt(reward, scale, law)


def linear_tilt(direction, scale=1.0) -> Tilt:
    """r(x) = bᵀ x, tilted law ``gmm.tilted_linear(λ b)``; any real λ."""
    direction = _vector("direction", direction)
    d = direction.shape[0]
    _scale("scale", scale, minimum=-np.inf)
    reward = functools.partial(_linear_reward, direction)

    def law(gmm, lam):
        _same_dim(gmm, d)
        _scale("scale", lam, minimum=-np.inf)
        return gmm.tilted_linear(jnp.asarray(lam, direction.dtype) * direction)

    return Tilt(reward, scale, law)


def _quadratic_reward(center, precision, x) -> jax.Array:
    """−½ (x_n − c)ᵀ A (x_n − c) per row, in x's floating dtype."""
    x = _rows(x, center.shape[0])
    diff = x - center.astype(x.dtype)
    return -0.5 * jnp.einsum("ni,ij,nj->n", diff, precision.astype(x.dtype), diff)


def _linear_reward(direction, x) -> jax.Array:
    """bᵀ x_n per row, in x's floating dtype."""
    x = _rows(x, direction.shape[0])
    return x @ direction.astype(x.dtype)


def _rows(x, d: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"reward input must have shape (batch, d) = (batch, {d}), got {x.shape}")
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _vector(name: str, value) -> jax.Array:
    value = jnp.asarray(value)
    if value.ndim != 1 or value.shape[0] == 0:
        raise ValueError(f"{name} must have shape (d,) with d >= 1, got {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    if not isinstance(value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite")
    return value


def _scale(name: str, value, *, minimum: float) -> None:
    """A concrete λ must be a finite real >= ``minimum``; traced values pass (checked by their caller)."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, (bool, str)) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a real scalar λ, got {value!r}")
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real scalar λ, got {value!r}") from None
    if not np.isfinite(lam) or lam < minimum:
        bound = "a finite real" if minimum == -np.inf else f"a finite real >= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {lam}")


def _same_dim(gmm: GaussianMixture, d: int) -> None:
    if gmm.dim != d:
        raise ValueError(f"the mixture has dimension {gmm.dim} but the reward is defined on dimension {d}")
