"""Variance-preserving cosine path (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 17):
alpha(t)^2 = f(t) / f(0), f(t) = cos^2(pi/2 (t + s) / (1 + s)), sigma = sqrt(1 - alpha^2)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from itscale.core.checks import in_range
from itscale.paths.path import Path, as_float


@dataclasses.dataclass(frozen=True)
class VPCosinePath(Path):
    """Cosine VP path, written with psi(t) = pi/2 (1 - t) / (1 + s) so that alpha(1) = 0 exactly:

    alpha = sin(psi) / sin(psi0),  sigma^2 = sin(psi0 - psi) sin(psi0 + psi) / sin(psi0)^2,
    psi0 = psi(0); this product form is free of cancellation near t = 0.
    """

    s: float = 0.008
    name: ClassVar[str] = "vp_cosine"

    def __post_init__(self):
        object.__setattr__(self, "s", in_range("s", self.s, 0.0, float("inf")))

    @property
    def _rate(self) -> float:
        return 0.5 * math.pi / (1.0 + self.s)

    @property
    def _sin_psi0(self) -> float:
        return math.sin(self._rate)

    def alpha(self, t) -> jax.Array:
        return jnp.sin(self._rate * (1.0 - as_float(t))) / self._sin_psi0

    def sigma(self, t) -> jax.Array:
        t = as_float(t)
        return jnp.sqrt(jnp.sin(self._rate * t) * jnp.sin(self._rate * (2.0 - t))) / self._sin_psi0

    def alpha_dot(self, t) -> jax.Array:
        return -self._rate * jnp.cos(self._rate * (1.0 - as_float(t))) / self._sin_psi0

    def sigma_dot(self, t) -> jax.Array:
        t = as_float(t)
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def log_snr(self, t) -> jax.Array:
        t = as_float(t)
        return 2.0 * jnp.log(jnp.sin(self._rate * (1.0 - t))) - jnp.log(
            jnp.sin(self._rate * t) * jnp.sin(self._rate * (2.0 - t)))

    def t_from_log_snr(self, lam) -> jax.Array:
        """sin(psi) = sin(psi0) sqrt(sigmoid(lambda)) and
        cos(psi)^2 = cos(psi0)^2 + sin(psi0)^2 sigmoid(-lambda); psi = atan2 of the two, well
        conditioned at both ends."""
        lam = as_float(lam)
        sin_psi = self._sin_psi0 * jnp.sqrt(jax.nn.sigmoid(lam))
        cos_psi = jnp.sqrt(math.cos(self._rate) ** 2 + self._sin_psi0**2 * jax.nn.sigmoid(-lam))
        return 1.0 - jnp.arctan2(sin_psi, cos_psi) / self._rate


def vp_cosine(s: float = 0.008) -> VPCosinePath:
    """The cosine variance-preserving path of Nichol & Dhariwal (2021) with offset ``s``."""
    return VPCosinePath(s)
