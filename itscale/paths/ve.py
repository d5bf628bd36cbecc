"""Variance-exploding path (Song et al. 2021, arXiv 2011.13456, eq. 31): alpha = 1,
sigma(t) = sigma_min (sigma_max / sigma_min)^t, geometric between sigma_min (t = 0) and sigma_max (t = 1)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from itscale.paths.path import Path, as_float
from itscale.paths.noise_levels import check_noise_levels


@dataclasses.dataclass(frozen=True)
class VEPath(Path):
    """Geometric VE path; sigma_dot = sigma log(sigma_max / sigma_min), log_snr = -2 log sigma."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: ClassVar[str] = "ve"

    def __post_init__(self):
        sigma_min, sigma_max = check_noise_levels(self.sigma_min, self.sigma_max)
        object.__setattr__(self, "sigma_min", sigma_min)
        object.__setattr__(self, "sigma_max", sigma_max)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t) -> jax.Array:
        return jnp.ones_like(as_float(t))

    def sigma(self, t) -> jax.Array:
        return jnp.exp(math.log(self.sigma_min) + self._log_ratio * as_float(t))

    def alpha_dot(self, t) -> jax.Array:
        return jnp.zeros_like(as_float(t))

    def sigma_dot(self, t) -> jax.Array:
        return self._log_ratio * self.sigma(t)

    def log_snr(self, t) -> jax.Array:
        return -2.0 * (math.log(self.sigma_min) + self._log_ratio * as_float(t))

    def t_from_log_snr(self, lam) -> jax.Array:
        return (-0.5 * as_float(lam) - math.log(self.sigma_min)) / self._log_ratio


def ve(sigma_min: float = 0.002, sigma_max: float = 80.0) -> VEPath:
    """The geometric variance-exploding path of Song et al. (2021)."""
    return VEPath(sigma_min, sigma_max)
