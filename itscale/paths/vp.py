"""Variance-preserving path with a linear beta schedule (Song et al. 2021, arXiv 2011.13456, eq. 29;
Ho et al. 2020): beta(t) = beta_min + t (beta_max - beta_min),
log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, sigma = sqrt(1 - alpha^2)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from itscale.core.checks import in_range
from itscale.paths.path import Path, as_float


@dataclasses.dataclass(frozen=True)
class VPPath(Path):
    """Linear-beta VP path; alpha_dot = -beta(t) alpha / 2, sigma_dot = -alpha alpha_dot / sigma."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    name: ClassVar[str] = "vp"

    def __post_init__(self):
        beta_min = in_range("beta_min", self.beta_min, 0.0, float("inf"))
        beta_max = in_range("beta_max", self.beta_max, 0.0, float("inf"), inclusive=False)
        if beta_max < beta_min:
            raise ValueError(f"beta_max must be >= beta_min = {beta_min}, got beta_max = {beta_max}")
        object.__setattr__(self, "beta_min", beta_min)
        object.__setattr__(self, "beta_max", beta_max)

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t) -> jax.Array:
        return jnp.exp(self._log_alpha(as_float(t)))

    def sigma(self, t) -> jax.Array:
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(as_float(t))))

    def alpha_dot(self, t) -> jax.Array:
        t = as_float(t)
        return -0.5 * self._beta(t) * self.alpha(t)

    def sigma_dot(self, t) -> jax.Array:
        t = as_float(t)
        return 0.5 * self._beta(t) * self.alpha(t) ** 2 / self.sigma(t)

    def log_snr(self, t) -> jax.Array:
        two_log_alpha = 2.0 * self._log_alpha(as_float(t))
        return two_log_alpha - jnp.log(-jnp.expm1(two_log_alpha))

    def t_from_log_snr(self, lam) -> jax.Array:
        """alpha^2 = sigmoid(lambda), so q = -2 log alpha = softplus(-lambda) solves
        (beta_max - beta_min) t^2 / 2 + beta_min t - q = 0; the root is taken in the cancellation-free
        form t = 2 q / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) q))."""
        q = jax.nn.softplus(-as_float(lam))
        root = jnp.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * q)
        return 2.0 * q / (self.beta_min + root)


def vp(beta_min: float = 0.1, beta_max: float = 20.0) -> VPPath:
    """The linear-beta variance-preserving path of Song et al. (2021)."""
    return VPPath(beta_min, beta_max)
