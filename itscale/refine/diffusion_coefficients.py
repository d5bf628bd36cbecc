"""Diffusion coefficients g(t) for reverse SDEs that keep a flow's marginals.

Any g gives an SDE with the marginals of the probability-flow ODE (Kim et al. 2025, arXiv 2503.19385,
sec. 3.1); g only sets how much noise is injected. ``g(t) = scale * shape(t)`` where the shape is fixed
when the sampler is built and ``scale`` is a traced hyper-parameter (``params["g_scale"]``):

- ``"constant"``: shape 1 (default scale 1).
- ``"sigma"``:    shape sigma(t), noise proportional to the path's noise level (default scale 1).
- ``"kim"``:      shape t^2 with default scale 3, g = 3 t^2, the choice of Kim et al. 2025 (sec. 4; the
  ``"square"`` diffusion coefficient of their code, scaled by ``diffusion_norm``). Vanishes at the data end.
- ``"forward"``:  shape sqrt(d sigma^2/dt - 2 (alpha_dot / alpha) sigma^2) = sigma sqrt(-d lambda / dt), the
  diffusion of the forward noising SDE, so scale 1 is the reverse SDE of Song et al. 2021 (arXiv
  2011.13456, eq. 6; sqrt(beta(t)) on the VP path). Infinite where alpha = 0 (t = 1 on ``linear`` and
  ``vp_cosine``): use a grid with t_max < 1 there.
- a callable ``g(t) -> array``: a user shape (default scale 1).

Near the data end the drift's ``-1/2 g^2 score`` term grows like g^2 / sigma^2 for data concentrated near a
lower-dimensional set, which makes Euler–Maruyama unstable unless g vanishes with sigma (``"sigma"``,
``"kim"``) or the grid stops at t_min > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.paths.path import Path, as_float

CHOICES = ("constant", "sigma", "kim", "forward")


class DiffusionCoefficient(NamedTuple):
    """``g(t, scale) = scale * shape(t)``; ``name`` for messages, ``default_scale`` for ``params``."""

    name: str
    shape: Callable[[jax.Array], jax.Array]
    default_scale: float

    def __call__(self, t, scale) -> jax.Array:
        return scale * self.shape(as_float(t))


def _forward_shape(path: Path) -> Callable:
    return lambda t: path.sigma(t) * jnp.sqrt(-path.log_snr_dot(t))


def diffusion_coefficient(g: str | Callable, path: Path) -> DiffusionCoefficient:
    """The :class:`DiffusionCoefficient` named ``g`` (one of ``CHOICES``) on ``path``, or a user ``g(t)``."""
    if isinstance(g, DiffusionCoefficient):
        return g
    if callable(g):
        return DiffusionCoefficient(getattr(g, "__name__", "user g"), g, 1.0)
    if not isinstance(g, str) or g not in CHOICES:
        raise ValueError(f"unknown g {g!r}; accepted: {', '.join(map(repr, CHOICES))} or a function g(t)")
    if g == "constant":
        return DiffusionCoefficient(g, jnp.ones_like, 1.0)
    if g == "sigma":
        return DiffusionCoefficient(g, path.sigma, 1.0)
    if g == "kim":
        return DiffusionCoefficient(g, jnp.square, 3.0)
    return DiffusionCoefficient(g, _forward_shape(path), 1.0)
