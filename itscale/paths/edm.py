"""EDM path (Karras et al. 2022, arXiv 2206.00364): alpha = 1 and the noise level follows the paper's
rho-schedule (eq. 5) continuously in t,

    sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,

so sigma(0) = sigma_min, sigma(1) = sigma_max, and a uniform grid in t reproduces the Karras
discretisation sigma_i exactly (rho = 7 by default, as in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from itscale.core.checks import in_range
from itscale.paths.noise_levels import check_noise_levels
from itscale.paths.path import Path, as_float


@dataclasses.dataclass(frozen=True)
class EDMPath(Path):
    """sigma(t) = (a + b t)^rho with a = sigma_min^(1/rho), b = sigma_max^(1/rho) - a;
    sigma_dot = rho b (a + b t)^(rho - 1); log_snr = -2 rho log(a + b t)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name: ClassVar[str] = "edm"

    def __post_init__(self):
        sigma_min, sigma_max = check_noise_levels(self.sigma_min, self.sigma_max)
        object.__setattr__(self, "sigma_min", sigma_min)
        object.__setattr__(self, "sigma_max", sigma_max)
        object.__setattr__(self, "rho", in_range("rho", self.rho, 0.0, float("inf"), inclusive=False))

    @property
    def _a(self) -> float:
        return self.sigma_min ** (1.0 / self.rho)

    @property
    def _b(self) -> float:
        return self.sigma_max ** (1.0 / self.rho) - self._a

    def alpha(self, t) -> jax.Array:
        return jnp.ones_like(as_float(t))

    def sigma(self, t) -> jax.Array:
        return (self._a + self._b * as_float(t)) ** self.rho

    def alpha_dot(self, t) -> jax.Array:
        return jnp.zeros_like(as_float(t))

    def sigma_dot(self, t) -> jax.Array:
        return self.rho * self._b * (self._a + self._b * as_float(t)) ** (self.rho - 1.0)

    def log_snr(self, t) -> jax.Array:
        return -2.0 * self.rho * jnp.log(self._a + self._b * as_float(t))

    def t_from_log_snr(self, lam) -> jax.Array:
        return (jnp.exp(-as_float(lam) / (2.0 * self.rho)) - self._a) / self._b


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> EDMPath:
    """The EDM path of Karras et al. (2022): alpha = 1, sigma on the rho-schedule from sigma_min to
    sigma_max."""
    return EDMPath(sigma_min, sigma_max, rho)
