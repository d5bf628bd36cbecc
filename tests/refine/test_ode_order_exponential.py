"""Measured convergence order of the exponential integrators (DDIM, DPM-Solver++(2M), UniPC) on the exact
mixture velocity (float64, d = 2), against Dopri8 at rtol 1e-12 from the same noise.

These solvers step in lambda = log(alpha / sigma); their order shows when every lambda-step is small.
So the grid is uniform in log-SNR over t in [0.1, 0.9] of the linear path (lambda in [-2.2, 2.2]),
away from lambda = -inf (t = 1) and +inf (t = 0) where a uniform-t grid makes the end steps infinite
in lambda (the asymptotic regime then starts only at hundreds of steps).
"""

import jax
import numpy as np
import pytest

import itscale as its
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)

STEPS = (8, 16, 32)
T_MAX, T_MIN = 0.9, 0.1
GRID = its.paths.Grid("log_snr", t_min=T_MIN, t_max=T_MAX)


SOLVERS = ["ddim", "dpm_solver_pp_2m", "unipc"]


@pytest.fixture(scope="module")
def measured_errors():
    path = its.paths.linear()
    velocity = ref.mixture().velocity(path)
    x = ref.noise()
    reference = ref.reference_solve(velocity, x, T_MAX, T_MIN)
    samplers = {s: its.refine.ode(velocity, s, grid=GRID, path=path) for s in SOLVERS}
    return ref.errors(samplers, x, reference, STEPS)


@pytest.mark.parametrize("solver", SOLVERS)
def test_measured_order_matches_declared_order(measured_errors, solver):
    errs = measured_errors[solver]
    assert np.all(np.diff(errs) < 0), errs
    order = ref.measured_order(STEPS, errs)
    assert abs(order - its.refine.SOLVERS[solver].order) <= 0.3, (solver, order, errs)
