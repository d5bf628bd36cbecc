"""Measured convergence order of the Runge--Kutta solvers on the exact mixture velocity (float64, d = 2).

Linear path, uniform grid over the whole interval t: 1 -> 0 (the plain flow-matching setting; the
linear-path velocity is finite at both ends). Reference: Dopri8 at rtol 1e-12 from the same noise.
"""

import jax
import pytest

import itscale as its
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)

STEPS = (8, 16, 32)
GRID = its.paths.Grid("uniform", t_min=0.0, t_max=1.0)


SOLVERS = ["euler", "midpoint", "heun", "rk4"]


@pytest.fixture(scope="module")
def measured_errors():
    path = its.paths.linear()
    velocity = ref.mixture().velocity(path)
    x = ref.noise()
    reference = ref.reference_solve(velocity, x, 1.0, 0.0)
    return ref.errors({s: its.refine.ode(velocity, s, grid=GRID) for s in SOLVERS}, x, reference, STEPS)


@pytest.mark.parametrize("solver", SOLVERS)
def test_measured_order_matches_declared_order(measured_errors, solver):
    ref.assert_declared_order(solver, STEPS, measured_errors[solver])
