"""Interpolant conversion: run a model trained on one path along another path.

For a new time s find t_s on the old path with the same signal-to-noise ratio,
log_snr_from(t_s) = log_snr_to(s), and the scale c_s = sigma_to(s) / sigma_from(t_s)
(= alpha_to(s) / alpha_from(t_s)), so that x_to(s) = c_s x_from(t_s). The velocity on the new path is

    u_to(x, s) = (c_dot / c) x + c t_dot u_from(x / c, t_s)

(Kim et al. 2025, arXiv 2503.19385, sec. 3.2; for the linear source path t_s = sigma / (alpha + sigma)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.paths.path import Path, as_float, expand_time


@dataclasses.dataclass(frozen=True)
class SNRMatching:
    """The time map s -> t_s and scale s -> c_s from ``path_to`` times to ``path_from`` times, with their
    exact s-derivatives; t_dot = lambda_to'(s) / lambda_from'(t_s) by the inverse function rule."""

    path_from: Path
    path_to: Path

    def time(self, s) -> jax.Array:
        """t_s = t_from_log_snr_from(log_snr_to(s))."""
        return self.path_from.t_from_log_snr(self.path_to.log_snr(as_float(s)))

    def time_dot(self, s) -> jax.Array:
        """d t_s / d s."""
        s = as_float(s)
        return self.path_to.log_snr_dot(s) / self.path_from.log_snr_dot(self.time(s))

    def scale(self, s) -> jax.Array:
        """c_s = sigma_to(s) / sigma_from(t_s)."""
        s = as_float(s)
        return self.path_to.sigma(s) / self.path_from.sigma(self.time(s))

    def scale_dot(self, s) -> jax.Array:
        """d c_s / d s = c_s (sigma_dot_to(s) / sigma_to(s) - t_dot sigma_dot_from(t_s) / sigma_from(t_s))."""
        s = as_float(s)
        t_s = self.time(s)
        to_rate = self.path_to.sigma_dot(s) / self.path_to.sigma(s)
        from_rate = self.path_from.sigma_dot(t_s) / self.path_from.sigma(t_s)
        return self.scale(s) * (to_rate - self.time_dot(s) * from_rate)


def snr_matching(path_from: Path, path_to: Path) -> SNRMatching:
    """The SNR-matching map taking times on ``path_to`` to times on ``path_from``."""
    return SNRMatching(path_from, path_to)


def change_path(velocity_fn: Callable, path_from: Path, path_to: Path) -> Callable:
    """A velocity model ``velocity_fn(x, t)`` on ``path_from`` as a velocity model ``fn(x, s)`` on
    ``path_to``; ``s`` is a scalar or a ``(batch,)`` vector and ``velocity_fn`` receives t_s of the
    same shape."""
    matching = snr_matching(path_from, path_to)

    def fn(x, s):
        s = as_float(s)
        t_s = matching.time(s)
        dtype = jnp.result_type(x)
        c, c_dot, t_dot = (expand_time(v, x).astype(dtype)
                           for v in (matching.scale(s), matching.scale_dot(s), matching.time_dot(s)))
        return (c_dot / c) * x + c * t_dot * velocity_fn(x / c, t_s)

    return fn
