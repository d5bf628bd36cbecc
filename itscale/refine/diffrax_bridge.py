"""diffrax solvers as itscale samplers: fixed steps on an itscale grid, or adaptive steps (PID controller).

``diffrax_ode(velocity_fn, solver=diffrax.Heun(), grid=...)``: each itscale step is one step of the diffrax
solver over one grid interval [t_i, t_{i+1}] (``solver.init`` then ``solver.step``), so any explicit
diffrax ODE solver runs inside ``its.run`` with the same grid, stats and combinators as ``its.refine.ode``.

``adaptive(velocity_fn, solver=diffrax.Tsit5(), rtol=..., atol=..., max_steps=...)``: each itscale step
integrates its grid interval with adaptive steps (diffrax's ``PIDController``; Hairer, Norsett & Wanner,
*Solving ODEs I*, sec. II.4; Söderlind 2002 for PID control). It is a Sampler, not a plain function, so
that the NFE it spends lands in ``result.stats.nfe`` and it composes with ``particles``, ``chain`` and
``trace=``; run it with ``num_steps=1`` for one adaptive solve over the whole grid [t_max, t_min] (more
steps split the solve at the grid times, e.g. to interleave resampling). ``max_steps`` (static) bounds the
attempted steps per itscale step; a solve that runs out returns NaN (counted in ``result.stats.nonfinite``)
and ``info["successful"] = False``. ``rtol``, ``atol`` and the PID coefficients are traced ``params``.
The adaptive loop is diffrax's (``solver.step`` + ``controller.adapt_step_size``, time reversed to run
from noise to data) written out, so that every attempted step is accounted for.

Counting NFE honestly. diffrax evaluates the vector field inside its own loops (the Runge–Kutta stages
run in a ``while_loop``), where itscale's ledger cannot see calls, and diffrax itself counts *steps*
(``num_steps``, ``num_accepted_steps``, ``num_rejected_steps``), not evaluations: a first-same-as-last
solver such as Tsit5 costs 7 evaluations on its first step and 6 on later ones, rejected steps cost as
much as accepted ones, and the PID controller's initial step-size selection (Hairer's algorithm, when
``dt0`` is None) costs 2 more. (``diffrax.diffeqsolve`` 0.7 wraps every term in a ``WrapTerm`` for the
time direction, so its PIDController never sees an ``ODETerm`` and, given dt0 = None, starts from
dt0 = 0.01 with no evaluation instead of Hairer's algorithm; the loop here applies the algorithm.)
So the vector field is called uncounted, and the evaluation counts of the solver's ``init``, first
``step``, later ``step`` and of ``controller.init`` are measured once per solver by
running them on a stand-in vector field that counts its real executions (``jax.debug.callback``), then
charged per sample: fixed step = init + first step; adaptive = controller init + init + first-step cost
for attempts before the first accepted step + later-step cost for the others. This is exact for
explicit solvers, whose counts do not depend on the data; implicit solvers (Newton iterations) are
refused.

``info``: fixed step: ``{"x0_hat"}`` when ``path`` is given and the solver exposes its first stage (explicit
Runge–Kutta solvers and Euler), else ``{}``; adaptive: ``{"evaluations", "accepted_steps",
"rejected_steps", "successful"}`` per itscale step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks, counting
from itscale.core.counting import counted
from itscale.core.sampler import Sampler
from itscale.paths.path import Path
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.sde import check_noise
from itscale.refine.solvers import Clock, Model
from itscale.core.weights import takes_models

_check_tolerances = checks.param_ranges(rtol=(0.0, float("inf")), atol=(0.0, float("inf")))


class EvaluationCounts(NamedTuple):
    """Vector-field evaluations of ``controller.init`` (PID, dt0=None), ``solver.init``, the first
    ``solver.step`` after ``init`` and a later ``solver.step``."""

    controller_init: int
    solver_init: int
    first_step: int
    later_step: int


class DiffraxState(NamedTuple):
    x: jax.Array


@functools.lru_cache(maxsize=64)
def evaluation_counts(solver: diffrax.AbstractSolver) -> EvaluationCounts:
    """Evaluations each phase of ``solver`` makes, measured on dy/dt = -y (see the module docstring)."""
    counts = [0, 0, 0, 0]

    def term(phase):
        def bump():
            counts[phase] += 1

        def vf(t, y, args):
            jax.debug.callback(bump)
            return -y

        return diffrax.ODETerm(vf)

    def phases(y0):
        t0, t1 = jnp.zeros((), y0.dtype), jnp.ones((), y0.dtype)
        pid = diffrax.PIDController(rtol=1e-3, atol=1e-3)
        pid.init(term(0), t0, t1, y0, None, None, solver.func, solver.error_order(term(0)))
        state = solver.init(term(1), t0, 0.5 * t1, y0, None)
        y1, _, _, state, _ = solver.step(term(2), t0, 0.5 * t1, y0, None, state, False)
        y2, _, _, _, _ = solver.step(term(3), 0.5 * t1, t1, y1, None, state, False)
        return y2

    jax.block_until_ready(jax.jit(phases)(jnp.ones((1,), jnp.float32)))
    jax.effects_barrier()
    return EvaluationCounts(*counts)


def check_solver(solver) -> EvaluationCounts:
    """An explicit diffrax ODE solver, with its measured :class:`EvaluationCounts`."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"solver must be a diffrax solver instance such as diffrax.Heun() or "
                        f"diffrax.Tsit5(), got {solver!r}")
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        raise ValueError(f"solver {type(solver).__name__} is implicit: its evaluations per step depend on "
                         "its Newton iterations and cannot be counted; use an explicit solver "
                         "(diffrax.Euler, Heun, Midpoint, Ralston, Bosh3, Tsit5, Dopri5, Dopri8)")
    try:
        return evaluation_counts(solver)
    except Exception as error:  # e.g. SDE solvers that need a control term
        raise ValueError(f"solver {type(solver).__name__} cannot integrate an ODE given by a single "
                         f"diffrax.ODETerm ({type(error).__name__}: {error})") from error


def _vector_field(velocity: Callable, state_dtype, sign: float = 1.0) -> diffrax.ODETerm:
    """``dy/dt = sign * u(y, sign * t)`` for diffrax, which integrates y in the times' dtype (at least
    float32); the model sees y in the state's dtype. Model calls made in diffrax's loops go to a
    discarded ledger (charged separately from the measured evaluation counts)."""

    def vf(t, y, args):
        x = y.astype(state_dtype)
        with counting.ledger():
            u = velocity(x, sign * t)
        checks.model_output("velocity_fn", u, x)
        return (sign * u).astype(y.dtype)

    return diffrax.ODETerm(vf)


def _first_velocity(dense_info, x, x_next, h):
    """u(x, t) from the step's first stage, when the solver exposes it."""
    if isinstance(dense_info, dict) and "k" in dense_info:
        return dense_info["k"][0] / h
    if isinstance(dense_info, dict) and set(dense_info) == {"y0", "y1"}:
        return (x_next - x) / h
    return None


@takes_models
def diffrax_ode(velocity_fn: Callable, solver: diffrax.AbstractSolver | None = None, *, grid="uniform",
                path: Path | None = None) -> Sampler:
    """One step of an explicit diffrax ``solver`` (default ``diffrax.Heun()``) per grid interval.

    ``grid`` and ``path`` as for :func:`itscale.refine.ode`; NFE per step = the solver's measured
    ``solver_init + first_step`` evaluations (e.g. Euler 1, Heun 2, Tsit5 7) per sample.
    """
    solver = diffrax.Heun() if solver is None else solver
    costs = check_solver(solver)
    if not callable(velocity_fn):
        raise TypeError("velocity_fn must be a callable fn(x, t) -> velocity, got "
                        f"{type(velocity_fn).__name__}")
    checks.path("path", path, optional=True)
    model = Model(counted(velocity_fn), path)
    times_rule = grid_times(grid, path)
    per_step = costs.solver_init + costs.first_step

    def init(key, x, params):
        check_noise("x", x)
        return DiffraxState(x)

    def step(key, state, ctx, params):
        clock = Clock(times_rule(ctx.num_steps, state.x.dtype), ctx.step)
        t0, t1 = clock.t(), clock.t(1)
        term, x = _vector_field(model.velocity_fn, state.x.dtype), state.x.astype(t0.dtype)
        solver_state = solver.init(term, t0, t1, x, None)
        x_next, _, dense_info, _, _ = solver.step(term, t0, t1, x, None, solver_state, False)
        counting.record({"nfe": per_step * counting.batch_size(x)})
        u = _first_velocity(dense_info, x, x_next, t1 - t0)
        info = {} if u is None else model.info(u, x, t0)
        return round_like(key, DiffraxState(x_next), state), info

    return Sampler(init, step, lambda state: state.x, None, prior=noise_prior(path, grid), nfe_per_step=per_step)


class _Solve(NamedTuple):
    """Carry of the adaptive loop (times in s = -t, increasing)."""

    s: jax.Array
    s_next: jax.Array
    y: jax.Array
    solver_state: object
    controller_state: object
    accepted: jax.Array
    rejected: jax.Array
    evaluations: jax.Array


def _adaptive_solve(solver, costs: EvaluationCounts, term, controller, s0, s1, y0, max_steps: int, dt0=None):
    """Integrate ``term`` from s0 to s1 > s0 with diffrax's step/adapt cycle; returns the final carry."""
    error_order = solver.error_order(term)
    s_next, controller_state = controller.init(term, s0, s1, y0, dt0, None, solver.func, error_order)
    s_next = jnp.minimum(s_next, s1)
    solver_state = solver.init(term, s0, s_next, y0, None)
    clip_floor = s1 - 100 * jnp.finfo(s1.dtype).eps * jnp.maximum(jnp.abs(s1), 1.0)
    zero = jnp.zeros((), jnp.int32)
    start = _Solve(s0, s_next, y0, solver_state, controller_state, zero, zero,
                   jnp.asarray((costs.controller_init if dt0 is None else 0) + costs.solver_init, jnp.int32))

    def not_done(c):
        return (c.s < s1) & (c.accepted + c.rejected < max_steps)

    def attempt(c):
        y, y_error, _, solver_state, _ = solver.step(term, c.s, c.s_next, c.y, None, c.solver_state, False)
        y_error = jax.tree.map(lambda e: jnp.where(jnp.isnan(e), jnp.inf, e), y_error)
        keep, s, s_next, _, controller_state, _ = controller.adapt_step_size(
            c.s, c.s_next, c.y, y, None, y_error, error_order, c.controller_state)
        s = jnp.minimum(s, s1)
        s_next = jnp.where(s_next > clip_floor, jnp.where(keep, s1, s + 0.5 * (s1 - s)), s_next)
        keep_tree = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        cost = jnp.where(c.accepted > 0, costs.later_step, costs.first_step).astype(jnp.int32)
        return _Solve(s, s_next, keep_tree(y, c.y), keep_tree(solver_state, c.solver_state), controller_state,
                      c.accepted + keep.astype(jnp.int32), c.rejected + (~keep).astype(jnp.int32),
                      c.evaluations + cost)

    return lax.while_loop(not_done, attempt, start)


@takes_models
def adaptive(velocity_fn: Callable, solver: diffrax.AbstractSolver | None = None, *, rtol: float = 1e-5,
             atol: float = 1e-5, max_steps: int = 4096, dt0: float | None = None, grid="uniform",
             path: Path | None = None) -> Sampler:
    """Adaptive integration of the flow ODE with an explicit diffrax ``solver`` (default ``diffrax.Tsit5()``)
    and a PID controller; see the module docstring. ``dt0``: the first step's size (> 0, in t units), or
    None for Hairer's initial step selection (2 evaluations).

    params: ``{"rtol", "atol", "pcoeff", "icoeff", "dcoeff"}`` (diffrax's default I-controller: 0, 1, 0).
    """
    solver = diffrax.Tsit5() if solver is None else solver
    costs = check_solver(solver)
    max_steps = checks.positive_int("max_steps", max_steps)
    if dt0 is not None:
        dt0 = checks.in_range("dt0", dt0, 0.0, 1.0, inclusive=False)
    if not callable(velocity_fn):
        raise TypeError("velocity_fn must be a callable fn(x, t) -> velocity, got "
                        f"{type(velocity_fn).__name__}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        checks.in_range(name, tol, 0.0, float("inf"), inclusive=False)
    velocity = counted(velocity_fn)
    times_rule = grid_times(grid, path)

    def init(key, x, params):
        check_noise("x", x)
        return DiffraxState(x)

    def step(key, state, ctx, params):
        clock = Clock(times_rule(ctx.num_steps, state.x.dtype), ctx.step)
        term, x = _vector_field(velocity, state.x.dtype, sign=-1.0), state.x.astype(clock.times.dtype)
        controller = diffrax.PIDController(rtol=params["rtol"], atol=params["atol"], pcoeff=params["pcoeff"],
                                           icoeff=params["icoeff"], dcoeff=params["dcoeff"])
        end = _adaptive_solve(solver, costs, term, controller, -clock.t(), -clock.t(1), x, max_steps,
                              dt0)
        counting.record({"nfe": end.evaluations * counting.batch_size(x)})
        successful = end.s >= -clock.t(1)
        x_next = jnp.where(successful, end.y, jnp.full_like(end.y, jnp.nan))
        info = {"evaluations": end.evaluations, "accepted_steps": end.accepted,
                "rejected_steps": end.rejected, "successful": successful}
        return round_like(key, DiffraxState(x_next), state), info

    return Sampler(init, step, lambda state: state.x,
                   {"rtol": float(rtol), "atol": float(atol), "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0},
                   prior=noise_prior(path, grid), validate=_check_tolerances)
