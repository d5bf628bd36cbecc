"""Explicit Runge--Kutta solvers of the flow ODE dx/dt = u(x, t), from a Butcher tableau.

One step from t to s = t + h (h < 0, integrating from noise to data):

    k_j = u(x + h sum_{l<j} a_jl k_l, t + c_j h),   j = 1..m,      x_s = x + h sum_j b_j k_j

(Hairer, Norsett & Wanner, *Solving ODEs I*, sec. II.1). Tableaus: Euler (order 1), explicit midpoint
and Heun's trapezoidal method (order 2), the classical RK4 (order 4). ``nfe_per_step`` = m stages;
no stage is shared between steps (none of these tableaus is first-same-as-last), so the count is exact.

Any explicit method given as a :class:`Tableau` runs the same way: ``its.refine.ode(u, solver=tableau)``,
or ``runge_kutta(name, tableau, order)`` for its :class:`Solver` record. :func:`check_tableau` validates it
(``a`` strictly lower triangular, ``len(b) == len(c) ==`` stages, ``c_i = sum_j a_ij``) and
:func:`tableau_order` reads its order from the order conditions (Butcher 1963; Hairer et al., sec. II.2,
Table 2.2) up to order 4, with A = (a_ij):

    order 1: sum b = 1
    order 2: b.c = 1/2
    order 3: b.c^2 = 1/3,  b.A c = 1/6
    order 4: b.c^3 = 1/4,  b.(c * A c) = 1/8,  b.A c^2 = 1/12,  b.A A c = 1/24
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.refine.solvers.base import Clock, Model, Solver


class Tableau(NamedTuple):
    """Butcher tableau of an explicit Runge--Kutta method with m stages: ``a`` (m rows, row j holding
    a_j1 .. a_j(j-1): ``((), (a21,), (a31, a32), ...)``; rows padded with zeros up to m entries, such as the
    rows of a square matrix, are accepted if the entries on and above the diagonal are 0), ``b`` the m
    weights, ``c`` the m nodes (c_j = sum_l a_jl)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]


ORDER_TOLERANCE = 1e-10
"""Absolute tolerance of the order conditions and of c_j = sum_l a_jl (tableaus written in floats)."""


def _real_vector(field: str, values) -> tuple[float, ...]:
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(f"{field} must be a sequence of real numbers, got {values!r}") from None
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
            v = np.asarray(v).item()                       # a 0-d array, e.g. a row of a numpy matrix
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{field}[{i}] must be a real number, got {v!r}")
        if not np.isfinite(float(v)):
            raise ValueError(f"{field}[{i}] must be finite, got {v!r}")
        out.append(float(v))
    return tuple(out)


def check_tableau(tableau, name: str = "tableau") -> Tableau:
    """``tableau`` validated and normalised (rows of ``a`` of lengths 0, 1, ..., m - 1, Python floats).

    Raises ``TypeError`` if it is not a :class:`Tableau` of real numbers and ``ValueError`` naming the field
    (``{name}.a``, ``.b`` or ``.c``) whose shape or values do not make a consistent explicit Runge--Kutta
    method: ``a`` strictly lower triangular with one row per stage, ``len(b) == len(c)`` = the number of
    stages, ``c_j = sum_l a_jl``, ``sum(b) = 1``. ``name``: the argument named in the messages."""
    if not isinstance(tableau, Tableau):
        raise TypeError(f"{name} must be an itscale.refine.Tableau(a, b, c), got {type(tableau).__name__}")
    b, c = _real_vector(f"{name}.b", tableau.b), _real_vector(f"{name}.c", tableau.c)
    m = len(b)
    if m == 0:
        raise ValueError(f"{name}.b must hold at least one weight (one per stage), got ()")
    if len(c) != m:
        raise ValueError(f"{name}.c must hold one node per stage, as many as {name}.b holds weights "
                         f"({m}), got {len(c)}")
    try:
        raw_rows = tuple(tableau.a)
    except TypeError:
        raise TypeError(f"{name}.a must be a sequence of {m} rows, got {tableau.a!r}") from None
    if len(raw_rows) != m:
        raise ValueError(f"{name}.a must hold one row per stage, as many as {name}.b holds weights ({m}), "
                         f"got {len(raw_rows)} rows")
    rows = []
    for j, raw in enumerate(raw_rows):
        row = _real_vector(f"{name}.a[{j}]", raw)
        if len(row) > m:
            raise ValueError(f"{name}.a must be {m} x {m} at most, but row a[{j}] has {len(row)} entries")
        if any(v != 0.0 for v in row[j:]):
            raise ValueError(f"{name}.a must be strictly lower triangular (an explicit method: a_jl = 0 for "
                             f"l >= j), but row a[{j}] = {row} has a nonzero entry in a column >= {j}")
        rows.append(row[:j] + (0.0,) * max(0, j - len(row)))
    for j, (row, c_j) in enumerate(zip(rows, c)):
        if abs(sum(row) - c_j) > ORDER_TOLERANCE * max(1.0, abs(c_j)):
            raise ValueError(f"{name}.c must hold the row sums of a (c_j = sum_l a_jl), but c[{j}] = {c_j} "
                             f"and sum(a[{j}]) = {sum(row)}")
    if abs(sum(b) - 1.0) > ORDER_TOLERANCE:
        raise ValueError(f"{name}.b must sum to 1 (otherwise the method is not consistent), got sum(b) = "
                         f"{sum(b)}")
    return Tableau(a=tuple(rows), b=b, c=c)


def order_conditions(tableau: Tableau) -> dict[int, list[tuple[float, float]]]:
    """{order p: [(value, required), ...]}: the order conditions of an explicit Runge--Kutta method up to
    order 4 (see the module docstring), evaluated on the (checked) ``tableau``."""
    tableau = check_tableau(tableau)
    m = len(tableau.b)
    a = np.zeros((m, m))
    for j, row in enumerate(tableau.a):
        a[j, :len(row)] = row
    b, c = np.asarray(tableau.b), np.asarray(tableau.c)
    ac = a @ c
    return {1: [(b.sum(), 1.0)],
            2: [(b @ c, 1 / 2)],
            3: [(b @ c**2, 1 / 3), (b @ ac, 1 / 6)],
            4: [(b @ c**3, 1 / 4), (b @ (c * ac), 1 / 8), (b @ (a @ c**2), 1 / 12), (b @ (a @ ac), 1 / 24)]}


def tableau_order(tableau: Tableau, max_order: int = 4) -> int:
    """The order p <= ``max_order`` (at most 4) of the method: the largest p whose order conditions, and
    those of every lower order, hold to ``ORDER_TOLERANCE``; at least 1, as :func:`check_tableau` refuses
    inconsistent tableaus (sum b != 1). A method of order 4 may have a higher order: the conditions of order
    5 are not checked."""
    max_order = checks.positive_int("max_order", max_order)
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1, 2, 3 or 4 (the conditions checked here), got {max_order}")
    order = 0
    for p, conditions in order_conditions(tableau).items():
        if p > max_order or any(abs(v - r) > ORDER_TOLERANCE for v, r in conditions):
            break
        order = p
    return order


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

    def looped(model: Model, x, t, h, first=None):
        """Stages ``1..m-1`` after ``first`` or, without it, all ``m`` stages, one per loop iteration."""
        coefficients, nodes = jnp.asarray(a, t.dtype), jnp.asarray(tableau.c, t.dtype)

        def stage(slopes, j):
            x_j = (x + h * jnp.tensordot(coefficients[j], slopes, axes=1)).astype(x.dtype)
            return slopes.at[j].set(model.velocity(x_j, t + nodes[j] * h)), None

        slopes = jnp.zeros((m,) + x.shape, x.dtype)
        if first is not None:
            slopes = slopes.at[0].set(first)
        return list(counting.scan(stage, slopes, jnp.arange(0 if first is None else 1, m))[0])

    def step(model: Model, state: RungeKuttaState, clock: Clock, key, params):
        """For states of ``LOOP_MIN_SIZE`` entries or more the stages run one per loop iteration, all of them
        (one copy of the model in the program; a loop of one later stage would be inlined) or, on a step
        that may be the final denoising step, those after the first: unrolled, XLA schedules every stage's
        time features (the model's work on t alone) at the start of the step, where their activations
        (batch x width each) stay live across the earlier stages; on smaller states the loop's fixed cost
        per iteration outweighs that. (``lax.optimization_barrier`` is removed before that scheduling on
        CPU, and a data dependency on the previous stage would be a cross-device collective on a sharded
        batch.)

        Stages and the update are computed in the times' dtype (at least float32); the model gets each
        stage point in the state's dtype. When ``clock.denoise`` is set (a grid ending where the path's
        velocity is singular) and true, the step is x_s = x0_hat from the first evaluation, 1 NFE."""
        x, t = state.x, clock.t()
        h = clock.t(1) - t
        loop = m > 1 and x.size >= LOOP_MIN_SIZE
        if clock.denoise is None and loop:   # every stage in the loop: one copy of the model in the program
            slopes = looped(model, x, t, h)
            return RungeKuttaState(_combine(x, h, tableau.b, slopes)), model.info(slopes[0], x, t)
        first = model.velocity(x, t)
        info = model.info(first, x, t)
        later = looped if loop else unrolled
        advance = lambda: _combine(x, h, tableau.b, later(model, x, t, h, first))  # noqa: E731
        if clock.denoise is None:
            return RungeKuttaState(advance()), info
        dtype = jnp.result_type(x, h)
        x_next = counting.cond(clock.denoise, lambda: info["x0_hat"].astype(dtype), advance)
        return RungeKuttaState(x_next), info

    return step


def runge_kutta(name: str, tableau: Tableau, order: int | None = None, reference: str = "", *,
                argument: str = "tableau") -> Solver:
    """The :class:`Solver` record of the explicit Runge--Kutta method ``tableau`` (checked by
    :func:`check_tableau`, whose messages name ``argument``). ``order``: its declared global order; None
    reads it from the order conditions (:func:`tableau_order`, up to 4). A declared order above the one the
    conditions give (when that is below 4) is refused."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    tableau = check_tableau(tableau, argument)
    measured = tableau_order(tableau)
    if order is None:
        order = measured
    else:
        order = checks.positive_int("order", order)
        if measured < 4 and order > measured:
            raise ValueError(f"order={order} is above the order {measured} that the tableau's order "
                             f"conditions give (see itscale.refine.solvers.runge_kutta.order_conditions)")
    return Solver(name=name, order=order, nfe_per_step=len(tableau.b), needs_path=False,
                  init=RungeKuttaState, step=_step(tableau), reference=reference)


euler = runge_kutta("euler", EULER, 1, "Euler 1768; Hairer et al., Solving ODEs I, sec. I.7")
midpoint = runge_kutta("midpoint", MIDPOINT, 2, "Runge 1895; Hairer et al., Solving ODEs I, sec. II.1")
heun = runge_kutta("heun", HEUN, 2, "Heun 1900; Karras et al. 2022 (arXiv 2206.00364), Alg. 1")
rk4 = runge_kutta("rk4", RK4, 4, "Kutta 1901; Hairer et al., Solving ODEs I, sec. II.1")
