"""What every ODE solver shares: its static declaration, the model it calls and the clock it reads.

A solver is a :class:`Solver` record (its name, declared ``order`` and ``nfe_per_step``, whether it
needs the path, default hyper-parameters) plus pure functions,

* ``init(x) -> state``                                      a NamedTuple, every leaf shaped like ``x``
* ``schedule(path, times) -> {name: (n,) array}``           optional per-step scalar coefficients
* ``step(model, state, clock, key, params) -> (state, info)``  one step from ``clock.t()`` to ``clock.t(1)``

that :func:`itscale.refine.ode` turns into an :class:`itscale.Sampler`. The schedule depends only on the
(static) grid, so ``ode`` evaluates it once at trace time into constant tables and each step reads one
row (``clock.coef``): the loop body is then the model call and a few fused array updates, like the
precomputed schedules of diffusers/k-diffusion. The declarations are what the convergence tests
measure against (as diffrax's solvers declare ``order()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.paths import conversions
from itscale.paths.path import Path


class Solver(NamedTuple):
    """Static description of an ODE solver, read by ``ode`` and by the tests.

    order: global order of accuracy p (error at t_min = O(h^p) on a smooth grid).
    nfe_per_step: network evaluations per step and per sample.
    needs_path: whether the step needs x0 / eps predictions (exponential integrators).
    schedule: ``fn(path, times) -> {name: array of shape (n,)}`` or None.
    params: default hyper-parameters (traced: changing them never recompiles), or None.
    reference: the paper the update rule comes from.
    """

    name: str
    order: int
    nfe_per_step: int
    needs_path: bool
    init: Callable[[jax.Array], Any]
    step: Callable[..., tuple[Any, dict]]
    schedule: Callable[..., dict] | None = None
    params: Any = None
    reference: str = ""


class Model(NamedTuple):
    """The velocity model u(x, t) = alpha_dot x0 + sigma_dot eps, with the path when one is known."""

    velocity_fn: Callable  # already ``itscale.core.counted``
    path: Path | None

    def velocity(self, x, t) -> jax.Array:
        """u(x, t), checked (at trace time) to have the shape and dtype of ``x``."""
        u = self.velocity_fn(x, t)
        checks.model_output("velocity_fn", u, x)
        return u

    def x0(self, u, x, t) -> jax.Array:
        """x0_hat = (sigma u - sigma_dot x) / (alpha_dot sigma - alpha sigma_dot) (needs the path)."""
        return conversions.x0_from_velocity(self.path, u, x, t)

    def info(self, u, x, t) -> dict:
        """The step's info: ``{"x0_hat": ...}`` at the pre-step state when the path is known, else ``{}``."""
        return {} if self.path is None else {"x0_hat": self.x0(u, x, t)}


class Clock(NamedTuple):
    """The grid ``times`` (t_0 = t_max > ... > t_n = t_min), the traced index ``step`` of this step,
    ``coef``, this step's row of the solver's schedule (scalars), and ``denoise``: None, or a traced bool,
    True when this step ends where the path's velocity is singular (:func:`denoise_flag`); the
    Runge--Kutta solvers then move to x0_hat from their first evaluation instead of calling the model there.
    """

    times: jax.Array
    step: jax.Array
    coef: dict | None = None
    denoise: jax.Array | None = None

    def t(self, offset: int = 0) -> jax.Array:
        """t_{step + offset}, clipped to the grid."""
        index = jnp.clip(self.step + offset, 0, self.times.shape[0] - 1)
        return self.times[index]


def linear_in_velocity(convert: Callable, path: Path, times) -> tuple[jax.Array, jax.Array]:
    """(a, b) with convert(path, u, x, t) = a(t) u + b(t) x at each time: the conversions of
    :mod:`itscale.paths.conversions` are linear in (u, x), so unit inputs give their coefficients."""
    ones, zeros = jnp.ones_like(times), jnp.zeros_like(times)
    return convert(path, ones, zeros, times), convert(path, zeros, ones, times)


def singular_end(path: Path, times) -> bool:
    """Whether the velocity is singular on ``path`` at the last of the concrete ``times``: alpha_dot,
    sigma_dot or the coefficients of x0 = a u + b x are not finite there (t = 0 on ``vp`` and ``vp_cosine``,
    where sigma_dot = -alpha alpha_dot / sigma is infinite; not on ``linear``)."""
    with jax.ensure_compile_time_eval():
        t = times[-1]
        x0_coefficients = linear_in_velocity(conversions.x0_from_velocity, path, t)
        values = (path.alpha_dot(t), path.sigma_dot(t), *x0_coefficients)
        return not all(bool(np.isfinite(np.asarray(v))) for v in values)


def denoise_flag(path: Path | None, times, end) -> jax.Array | None:
    """``Clock.denoise`` of a step ending at time ``end`` (traced) on the constant grid ``times``:
    ``end == times[-1]`` when the grid ends where the path's velocity is singular, None otherwise (without a
    path, or with a regular end: the step is unchanged). Decided at trace time: the grid is a constant."""
    if path is None or not singular_end(path, times):
        return None
    return end == times[-1]
