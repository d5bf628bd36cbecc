"""Shared by the ODE solver tests: cheap velocities, a 2-D Gaussian mixture with its exact velocity, a
tight diffrax reference solve from the same noise, and the measured convergence order.

The float64 reference helpers (``noise``, ``reference_solve``) need x64 enabled (the order tests set it).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from itscale.scaling.power_law import fit_power_law


def decay(x, t):
    """u = -x: Euler from t to t - h multiplies x by (1 + h)."""
    return -x


def wave(x, t):
    """A cheap nonlinear, time-dependent velocity."""
    return jnp.sin(3.0 * x) * t - x


def x32(shape=(3, 2), seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def mixture() -> its.models.GaussianMixture:
    """Two well-overlapping components: the velocity is smooth enough that 8-32 steps are asymptotic."""
    covs = 3.0 * jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.05], [-0.05, 0.4]]])
    return its.models.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]), covs)


def noise(batch: int = 16, dim: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (batch, dim), jnp.float64)


def reference_solve(velocity, x, t_start: float, t_end: float) -> jax.Array:
    """x at t_end from x at t_start by Dopri8 (order 8) with rtol = atol = 1e-12."""
    term = diffrax.ODETerm(lambda t, y, args: velocity(y, t))
    solution = diffrax.diffeqsolve(term, diffrax.Dopri8(), t_start, t_end, (t_end - t_start) / 64, x,
                                   stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
                                   max_steps=100_000)
    return solution.ys[-1]


def errors(samplers: dict, x, reference, steps) -> dict:
    """{name: RMS errors against ``reference`` of ``its.run(sampler, ..., num_steps=n)`` for n in ``steps``}.

    Every run is traced into one jitted function: one XLA compilation instead of one per (solver, n).
    """

    @jax.jit
    def outputs(x):
        return {name: [its.run(s, jax.random.key(1), x, num_steps=n).output for n in steps]
                for name, s in samplers.items()}

    return {name: np.asarray([float(jnp.sqrt(jnp.mean((out - reference) ** 2))) for out in outs])
            for name, outs in outputs(x).items()}


def mixture_errors(make_samplers, steps) -> dict:
    """:func:`errors` of the samplers ``make_samplers(velocity)`` built on the exact mixture velocity of the
    linear path, against a reference solve of the flow from t = 1 to the data at t = 0."""
    velocity = mixture().velocity(its.paths.linear())
    x = noise()
    return errors(make_samplers(velocity), x, reference_solve(velocity, x, 1.0, 0.0), steps)


def assert_order(steps, errs, order: float) -> None:
    """Errors fall with the step count, at slope ``order`` (within ±0.3)."""
    assert np.all(np.diff(errs) < 0), errs
    measured = measured_order(steps, errs)
    assert abs(measured - order) <= 0.3, (order, measured, errs)


def measured_order(steps, errs) -> float:
    """The log-log slope b of err = a n^(-b) (least squares)."""
    return fit_power_law(steps, errs).b


def assert_declared_order(solver: str, steps, errs) -> None:
    """Errors fall with the step count, at the slope the solver declares (within ±0.3)."""
    assert_order(steps, errs, its.refine.SOLVERS[solver].order)
