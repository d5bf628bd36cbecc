"""Conversions between the four things a model can predict, for any path.

With x = alpha x0 + sigma eps and the velocity u = alpha_dot x0 + sigma_dot eps, the pair (x, u)
determines (x0, eps) through the 2x2 system whose determinant is D = alpha_dot sigma - alpha sigma_dot:

    x0 = (sigma u - sigma_dot x) / D,   eps = (alpha_dot x - alpha u) / D,   score = -eps / sigma

(Kim et al. 2025, arXiv 2503.19385, sec. 3; score = -eps / sigma is Tweedie's formula, Efron 2011).
Array-level functions take ``(path, prediction, x, t)`` with ``t`` a scalar or a ``(batch,)`` vector;
the adapters ``as_velocity`` / ``as_x0`` / ``as_eps`` / ``as_score`` turn a model ``fn(x, t)`` that
predicts one quantity into one that predicts another.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from itscale.core.checks import choice
from itscale.paths.path import Path

PREDICTIONS = ("velocity", "x0", "eps", "score")


def x0_from_eps(path: Path, eps, x, t) -> jax.Array:
    """x0 = (x - sigma eps) / alpha."""
    alpha, sigma, _, _ = path.coefficients(t, x)
    return (x - sigma * eps) / alpha


def eps_from_x0(path: Path, x0, x, t) -> jax.Array:
    """eps = (x - alpha x0) / sigma."""
    alpha, sigma, _, _ = path.coefficients(t, x)
    return (x - alpha * x0) / sigma


def score_from_eps(path: Path, eps, x, t) -> jax.Array:
    """score = -eps / sigma."""
    _, sigma, _, _ = path.coefficients(t, x)
    return -eps / sigma


def eps_from_score(path: Path, score, x, t) -> jax.Array:
    """eps = -sigma score."""
    _, sigma, _, _ = path.coefficients(t, x)
    return -sigma * score


def x0_from_score(path: Path, score, x, t) -> jax.Array:
    """Tweedie: x0 = (x + sigma^2 score) / alpha."""
    alpha, sigma, _, _ = path.coefficients(t, x)
    return (x + sigma**2 * score) / alpha


def score_from_x0(path: Path, x0, x, t) -> jax.Array:
    """score = (alpha x0 - x) / sigma^2."""
    alpha, sigma, _, _ = path.coefficients(t, x)
    return (alpha * x0 - x) / sigma**2


def x0_from_velocity(path: Path, u, x, t) -> jax.Array:
    """x0 = (sigma u - sigma_dot x) / (alpha_dot sigma - alpha sigma_dot)."""
    alpha, sigma, alpha_dot, sigma_dot = path.coefficients(t, x)
    return (sigma * u - sigma_dot * x) / (alpha_dot * sigma - alpha * sigma_dot)


def eps_from_velocity(path: Path, u, x, t) -> jax.Array:
    """eps = (alpha_dot x - alpha u) / (alpha_dot sigma - alpha sigma_dot)."""
    alpha, sigma, alpha_dot, sigma_dot = path.coefficients(t, x)
    return (alpha_dot * x - alpha * u) / (alpha_dot * sigma - alpha * sigma_dot)


def score_from_velocity(path: Path, u, x, t) -> jax.Array:
    """score = (alpha u - alpha_dot x) / (sigma (alpha_dot sigma - alpha sigma_dot))."""
    alpha, sigma, alpha_dot, sigma_dot = path.coefficients(t, x)
    return (alpha * u - alpha_dot * x) / (sigma * (alpha_dot * sigma - alpha * sigma_dot))


def velocity_from_x0(path: Path, x0, x, t) -> jax.Array:
    """u = alpha_dot x0 + sigma_dot eps with eps = (x - alpha x0) / sigma."""
    alpha, sigma, alpha_dot, sigma_dot = path.coefficients(t, x)
    return alpha_dot * x0 + sigma_dot * (x - alpha * x0) / sigma


def velocity_from_eps(path: Path, eps, x, t) -> jax.Array:
    """u = alpha_dot x0 + sigma_dot eps with x0 = (x - sigma eps) / alpha."""
    alpha, sigma, alpha_dot, sigma_dot = path.coefficients(t, x)
    return alpha_dot * (x - sigma * eps) / alpha + sigma_dot * eps


def velocity_from_score(path: Path, score, x, t) -> jax.Array:
    """u = velocity_from_eps with eps = -sigma score."""
    return velocity_from_eps(path, eps_from_score(path, score, x, t), x, t)


_CONVERSIONS = {
    ("eps", "x0"): x0_from_eps, ("x0", "eps"): eps_from_x0,
    ("eps", "score"): score_from_eps, ("score", "eps"): eps_from_score,
    ("score", "x0"): x0_from_score, ("x0", "score"): score_from_x0,
    ("velocity", "x0"): x0_from_velocity, ("velocity", "eps"): eps_from_velocity,
    ("velocity", "score"): score_from_velocity, ("x0", "velocity"): velocity_from_x0,
    ("eps", "velocity"): velocity_from_eps, ("score", "velocity"): velocity_from_score,
}


def convert(path: Path, value, x, t, *, source: str, target: str) -> jax.Array:
    """Turn a ``source`` prediction at (x, t) into the ``target`` one; both are names in ``PREDICTIONS``."""
    choice("source", source, PREDICTIONS)
    if choice("target", target, PREDICTIONS) == source:
        return value
    return _CONVERSIONS[(source, target)](path, value, x, t)


def _adapter(fn: Callable, path: Path, prediction: str, target: str) -> Callable:
    choice("prediction", prediction, PREDICTIONS)
    if prediction == target:
        return fn
    return lambda x, t: _CONVERSIONS[(prediction, target)](path, fn(x, t), x, t)


def as_velocity(fn: Callable, path: Path, prediction: str = "velocity") -> Callable:
    """A model ``fn(x, t)`` predicting ``prediction`` turned into one predicting the velocity u."""
    return _adapter(fn, path, prediction, "velocity")


def as_x0(fn: Callable, path: Path, prediction: str = "velocity") -> Callable:
    """A model ``fn(x, t)`` predicting ``prediction`` turned into one predicting x0 (the denoiser)."""
    return _adapter(fn, path, prediction, "x0")


def as_eps(fn: Callable, path: Path, prediction: str = "velocity") -> Callable:
    """A model ``fn(x, t)`` predicting ``prediction`` turned into one predicting eps."""
    return _adapter(fn, path, prediction, "eps")


def as_score(fn: Callable, path: Path, prediction: str = "velocity") -> Callable:
    """A model ``fn(x, t)`` predicting ``prediction`` turned into one predicting the score grad log p_t."""
    return _adapter(fn, path, prediction, "score")
