"""Explicit Runge--Kutta solvers of the flow ODE dx/dt = u(x, t), from a Butcher tableau.

One step from t to s = t + h (h < 0, integrating from noise to data):

    k_j = u(x + h sum_{l<j} a_jl k_l, t + c_j h),   j = 1..m,      x_s = x + h sum_j b_j k_j

(Hairer, Norsett & Wanner, *Solving ODEs I*, sec. II.1). Tableaus: Euler (order 1), explicit midpoint
and Heun's trapezoidal method (order 2), the classical RK4 (order 4). ``nfe_per_step`` = m stages;
no stage is shared between steps (none of these tableaus is first-same-as-last), so the count is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import counting
from itscale.refine.solvers.base import Clock, Model, Solver


class Tableau(NamedTuple):
    """Butcher tableau: ``a`` (strictly lower-triangular rows), ``b`` weights, ``c`` nodes."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]


EULER = Tableau(a=((),), b=(1.0,), c=(0.0,))
MIDPOINT = Tableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))
HEUN = Tableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))
RK4 = Tableau(a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
              c=(0.0, 0.5, 0.5, 1.0))


class RungeKuttaState(NamedTuple):
    x: jax.Array


def _combine(x, h, weights, slopes):
    """x + h sum_j w_j k_j, skipping the zero weights of the (static) tableau."""
    for w, k in zip(weights, slopes):
        if w != 0.0:
            x = x + (h * w) * k
    return x


LOOP_MIN_SIZE = 4096
"""States of at least this many entries run the later stages in a loop (see ``_step``)."""


def _step(tableau: Tableau):
    m = len(tableau.b)
    a = np.zeros((m, m))
    for j, row in enumerate(tableau.a):
        a[j, :len(row)] = row

    def unrolled(model: Model, x, t, h, first):
        slopes = [first]
        for a_j, c_j in zip(tableau.a[1:], tableau.c[1:]):
            slopes.append(model.velocity(_combine(x, h, a_j, slopes).astype(x.dtype), t + c_j * h))
        return slopes

    def looped(model: Model, x, t, h, first):
        coefficients, nodes = jnp.asarray(a, t.dtype), jnp.asarray(tableau.c, t.dtype)

        def stage(slopes, j):
            x_j = (x + h * jnp.tensordot(coefficients[j], slopes, axes=1)).astype(x.dtype)
            return slopes.at[j].set(model.velocity(x_j, t + nodes[j] * h)), None

        slopes = jnp.zeros((m,) + x.shape, x.dtype).at[0].set(first)
        return list(counting.scan(stage, slopes, jnp.arange(1, m))[0])

    def step(model: Model, state: RungeKuttaState, clock: Clock, key, params):
        """The later stages run one per loop iteration for states of ``LOOP_MIN_SIZE`` entries or more:
        unrolled, XLA schedules every stage's time features (the model's work on t alone) at the start
        of the step, where their activations (batch x width each) stay live across the earlier stages;
        on smaller states the loop's fixed cost per iteration outweighs that. (``lax.optimization_barrier``
        is removed before that scheduling on CPU, and a data dependency on the previous stage would be a
        cross-device collective on a sharded batch.)

        Stages and the update are computed in the times' dtype (at least float32); the model gets each
        stage point in the state's dtype. When ``clock.denoise`` is set (a grid ending where the path's
        velocity is singular) and true, the step is x_s = x0_hat from the first evaluation, 1 NFE."""
        x, t = state.x, clock.t()
        h = clock.t(1) - t
        first = model.velocity(x, t)
        info = model.info(first, x, t)
        later = looped if m > 1 and x.size >= LOOP_MIN_SIZE else unrolled
        advance = lambda: _combine(x, h, tableau.b, later(model, x, t, h, first))  # noqa: E731
        if clock.denoise is None:
            return RungeKuttaState(advance()), info
        dtype = jnp.result_type(x, h)
        x_next = counting.cond(clock.denoise, lambda: info["x0_hat"].astype(dtype), advance)
        return RungeKuttaState(x_next), info

    return step


def runge_kutta(name: str, tableau: Tableau, order: int, reference: str) -> Solver:
    """The :class:`Solver` record of an explicit Runge--Kutta method."""
    return Solver(name=name, order=order, nfe_per_step=len(tableau.b), needs_path=False,
                  init=RungeKuttaState, step=_step(tableau), reference=reference)


euler = runge_kutta("euler", EULER, 1, "Euler 1768; Hairer et al., Solving ODEs I, sec. I.7")
midpoint = runge_kutta("midpoint", MIDPOINT, 2, "Runge 1895; Hairer et al., Solving ODEs I, sec. II.1")
heun = runge_kutta("heun", HEUN, 2, "Heun 1900; Karras et al. 2022 (arXiv 2206.00364), Alg. 1")
rk4 = runge_kutta("rk4", RK4, 4, "Kutta 1901; Hairer et al., Solving ODEs I, sec. II.1")
