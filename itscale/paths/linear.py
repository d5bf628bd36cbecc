"""Linear (rectified-flow) path: alpha = 1 - t, sigma = t (Liu et al. 2023, arXiv 2209.03003;
Lipman et al. 2023, arXiv 2210.02747)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from itscale.paths.path import Path, as_float


@dataclasses.dataclass(frozen=True)
class LinearPath(Path):
    """x_t = (1 - t) x0 + t eps; log_snr = 2 log((1 - t) / t), inverse t = sigmoid(-lambda / 2)."""

    name: ClassVar[str] = "linear"

    def alpha(self, t) -> jax.Array:
        return 1.0 - as_float(t)

    def sigma(self, t) -> jax.Array:
        return as_float(t)

    def alpha_dot(self, t) -> jax.Array:
        return -jnp.ones_like(as_float(t))

    def sigma_dot(self, t) -> jax.Array:
        return jnp.ones_like(as_float(t))

    def log_snr(self, t) -> jax.Array:
        t = as_float(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, lam) -> jax.Array:
        return jax.nn.sigmoid(-0.5 * as_float(lam))


def linear() -> LinearPath:
    """The rectified-flow path alpha = 1 - t, sigma = t."""
    return LinearPath()
