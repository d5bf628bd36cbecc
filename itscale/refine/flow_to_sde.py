"""Flow ODE -> SDE with the same marginals (Kim et al. 2025, arXiv 2503.19385, sec. 3.1).

For the path x_t = alpha x0 + sigma eps and a velocity model u(x, t) (the flow ODE dx/dt = u), the score is

    s = (alpha u - alpha_dot x) / (sigma (alpha_dot sigma - alpha sigma_dot))

and for any diffusion coefficient g(t) >= 0 the reverse-time SDE, integrated from t = 1 down to t = 0,

    dx = f(x, t) dt + g(t) dW_bar,      f = u - 1/2 g^2 s,

has the marginals p_t of the ODE: in the Fokker–Planck equation the extra diffusion 1/2 g^2 Laplacian(p)
cancels the drift correction div(1/2 g^2 s p) because s p = grad p. g = 0 recovers the ODE. A model
predicting x0, eps or the score is first turned into a velocity (:mod:`itscale.paths.conversions`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from itscale.core import checks
from itscale.core.counting import counted
from itscale.paths import conversions
from itscale.paths.path import Path


def counted_velocity(model_fn: Callable, path: Path, prediction: str = "velocity") -> Callable:
    """``model_fn(x, t)`` predicting ``prediction`` as a velocity ``fn(x, t)``, NFE-counted once.

    The model's own output is checked (shape and dtype of ``x``) before conversion. The returned function
    carries the counted mark of the model it calls (``functools.update_wrapper``), so wrapping it again
    with :func:`itscale.core.counted` (as ``its.refine.ode`` does) does not count it twice.
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a callable fn(x, t) -> prediction, got {type(model_fn).__name__}")
    checks.choice("prediction", prediction, conversions.PREDICTIONS)
    checks.path("path", path)
    model = counted(model_fn)

    def velocity(x, t):
        out = model(x, t)
        checks.model_output("model_fn", out, x)
        return conversions.convert(path, out, x, t, source=prediction, target="velocity")

    return functools.update_wrapper(velocity, model)


def reverse_drift(path: Path, u, x, t, g) -> jax.Array:
    """f = u - 1/2 g^2 s with s the score implied by the velocity ``u`` at (x, t); ``g`` broadcasts to x."""
    return u - 0.5 * g**2 * conversions.score_from_velocity(path, u, x, t)
