"""The interpolant x_t = alpha(t) x0 + sigma(t) eps shared by every path, and time broadcasting.

t lies in [0, 1]; t = 0 is data and t = 1 is (approximately) pure noise. A flow model predicts the
velocity u = alpha_dot(t) x0 + sigma_dot(t) eps (Lipman et al. 2023, arXiv 2210.02747; Kingma et al.
2021, arXiv 2107.00630 for the log-SNR parameterisation).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import jax
import jax.numpy as jnp


def as_float(t) -> jax.Array:
    """``t`` as an array of inexact dtype; integers become jax's default float, floats keep theirs."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.inexact) else t.astype(float)


def expand_time(t, x) -> jax.Array:
    """Reshape a time (scalar, or a ``(batch,)`` vector) to broadcast against a state ``x`` of shape
    ``(batch, ...)``.

    Raises ``ValueError`` naming ``t`` when it is neither a scalar nor a vector matching ``x``'s
    leading axis.
    """
    t, shape = jnp.asarray(t), jnp.shape(x)
    if t.ndim == 0:
        return t
    if t.ndim == 1 and len(shape) >= 1 and t.shape[0] == shape[0]:
        return t.reshape(t.shape + (1,) * (len(shape) - 1))
    raise ValueError(f"t must be a scalar or a vector of shape (batch,) = ({shape[0] if shape else '?'},)"
                     f" matching the state's leading axis; got t of shape {t.shape} for x of shape {shape}")


class Path(abc.ABC):
    """A noising path: elementwise ``alpha``, ``sigma``, their exact time derivatives, and the
    log signal-to-noise ratio ``log_snr = log(alpha^2 / sigma^2)`` with its exact inverse.

    Concrete paths are frozen dataclasses, hence hashable and usable as static ``jit`` arguments.
    Every method maps an array of times elementwise; the output dtype follows ``t``.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def alpha(self, t) -> jax.Array:
        """Signal scale alpha(t)."""

    @abc.abstractmethod
    def sigma(self, t) -> jax.Array:
        """Noise scale sigma(t)."""

    @abc.abstractmethod
    def alpha_dot(self, t) -> jax.Array:
        """d alpha / dt, in closed form."""

    @abc.abstractmethod
    def sigma_dot(self, t) -> jax.Array:
        """d sigma / dt, in closed form."""

    @abc.abstractmethod
    def log_snr(self, t) -> jax.Array:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2), decreasing in t."""

    @abc.abstractmethod
    def t_from_log_snr(self, lam) -> jax.Array:
        """The exact inverse of ``log_snr``: the time t with log_snr(t) = lam."""

    def log_snr_dot(self, t) -> jax.Array:
        """d lambda / dt = 2 (alpha_dot / alpha - sigma_dot / sigma)."""
        t = as_float(t)
        return 2.0 * (self.alpha_dot(t) / self.alpha(t) - self.sigma_dot(t) / self.sigma(t))

    def coefficients(self, t, x) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(alpha, sigma, alpha_dot, sigma_dot)`` at ``t`` (scalar or ``(batch,)``), shaped to broadcast
        against ``x`` and cast to ``x``'s float dtype so that conversions keep the state's dtype."""
        t = expand_time(as_float(t), x)
        x_dtype = jnp.result_type(x)
        dtype = x_dtype if jnp.issubdtype(x_dtype, jnp.inexact) else t.dtype
        return tuple(f(t).astype(dtype) for f in (self.alpha, self.sigma, self.alpha_dot, self.sigma_dot))
