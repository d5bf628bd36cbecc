"""The default grid reaches the data: a grid given by kind name ("uniform", "quadratic") ends at t_min = 0
where the model is finite at t = 0 (no path, linear, ve, edm), at 1e-3 where the path's velocity is singular
there (vp, vp_cosine); "karras" and "log_snr" keep t_min = 1e-3; a Grid(...) or an array is taken exactly.
One rule (``itscale.refine.grid_times``) for every refine sampler.

Heun on the exact mixture (float64, Dopri8 reference to t = 0 at rtol 1e-12, as in
``test_ode_order_runge_kutta``): on the default grid its error falls as n^-2 below 1e-4; with the old
default, an explicit Grid(t_min=1e-3), it flattens at the bias of stopping at t = 1e-3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.grid_times import DATA_END_T_MIN, default_t_min, grid_times
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)

PATHS = {"none": None, "linear": its.paths.linear(), "vp": its.paths.vp(), "vp_cosine": its.paths.vp_cosine(),
         "ve": its.paths.ve(), "edm": its.paths.edm()}
FINITE_AT_ZERO = {"none": True, "linear": True, "vp": False, "vp_cosine": False, "ve": True, "edm": True}


@pytest.mark.parametrize("name", list(PATHS))
def test_the_rule_by_kind_and_path(name):
    path = PATHS[name]
    for kind in ("uniform", "quadratic"):
        assert default_t_min(kind, path) == (0.0 if FINITE_AT_ZERO[name] else DATA_END_T_MIN)
    for kind in ("karras", "log_snr"):
        assert default_t_min(kind, path) == DATA_END_T_MIN


def test_the_rule_follows_singular_end_at_zero():
    from itscale.refine.solvers.base import singular_end

    for name, path in PATHS.items():
        if path is not None:
            assert singular_end(path, np.zeros(1)) == (not FINITE_AT_ZERO[name]), name


def test_an_x0_model_whose_velocity_needs_one_over_sigma_keeps_t_min():
    linear = PATHS["linear"]
    assert default_t_min("uniform", linear, "x0") == DATA_END_T_MIN   # u = ... + sigma_dot (x - x0) / sigma
    assert default_t_min("uniform", linear, "eps") == default_t_min("uniform", linear, "score") == 0.0
    assert default_t_min("uniform", PATHS["ve"], "x0") == 0.0            # sigma(0) = sigma_min > 0


@pytest.mark.parametrize("kind", ["uniform", "quadratic"])
def test_a_kind_name_ends_at_zero_and_an_explicit_grid_keeps_its_times(kind):
    names = grid_times(kind, None)(8, jnp.float64)
    assert float(names[0]) == 1.0 and float(names[-1]) == 0.0
    np.testing.assert_array_equal(names, its.paths.Grid(kind, t_min=0.0).times(8))
    explicit = grid_times(its.paths.Grid(kind), None)(8, jnp.float64)
    np.testing.assert_array_equal(explicit, its.paths.Grid(kind, t_min=1e-3).times(8))
    array = np.linspace(0.9, 0.2, 5)
    np.testing.assert_array_equal(grid_times(array, PATHS["linear"])(4, jnp.float64), array)


def test_vp_keeps_1e_minus_3():
    vp = PATHS["vp"]
    for kind in ("uniform", "quadratic", "karras", "log_snr"):
        times = grid_times(kind, vp)(8, jnp.float64)
        assert float(times[-1]) == pytest.approx(1e-3, rel=1e-12), kind


def one(x, t):
    """u = 1: the exact flow is x(t) = x(1) - (1 - t); every sampler below integrates it exactly."""
    return jnp.ones_like(x)


def x0_of_one(x, t):
    """The x0 prediction of u = 1 on the linear path: x0_hat = x - t."""
    return x - t


LINEAR = PATHS["linear"]
SAMPLERS = {
    "ode euler": lambda: its.refine.ode(one, "euler"),
    "ode heun": lambda: its.refine.ode(one, "heun", path=LINEAR),
    "ode rk4 quadratic": lambda: its.refine.ode(one, "rk4", grid="quadratic"),
    "ode tableau": lambda: its.refine.ode(one, its.refine.Tableau(((), (2 / 3,)), (0.25, 0.75), (0, 2 / 3))),
    "ode ddim": lambda: its.refine.ode(one, "ddim", path=LINEAR),
    "ode dpm_solver_pp_2m": lambda: its.refine.ode(one, "dpm_solver_pp_2m", path=LINEAR),
    "sde (g_scale 0)": lambda: its.refine.sde(one, LINEAR, g="sigma")._replace(params={"g_scale": 0.0}),
    "ddpm (eta 0)": lambda: its.refine.ddpm(one, LINEAR)._replace(params={"eta": 0.0}),
    "restart (no restarts)": lambda: its.refine.restart(one, LINEAR, restarts=0),
    "diffrax_ode": lambda: its.refine.diffrax_ode(one),
    "adaptive": lambda: its.refine.adaptive(one),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_refine_sampler_runs_to_t_zero_by_default(name):
    x = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    num_steps = 1 if name == "adaptive" else 4
    out = its.run(SAMPLERS[name](), jax.random.key(1), x, num_steps=num_steps).output
    np.testing.assert_allclose(out, x - 1.0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name, sampler", [
    ("ode on vp", lambda: its.refine.ode(one, "heun", path=PATHS["vp"])),
    ("restart of an x0 model on linear", lambda: its.refine.restart(x0_of_one, LINEAR, restarts=0,
                                                                     prediction="x0")),
    ("explicit Grid()", lambda: its.refine.ode(one, "heun", grid=its.paths.Grid("uniform"))),
])
def test_where_the_model_is_singular_at_zero_it_stops_at_1e_minus_3(name, sampler):
    x = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    result = its.run(sampler(), jax.random.key(1), x, num_steps=4)
    np.testing.assert_allclose(result.output, x - (1.0 - 1e-3), rtol=0, atol=1e-9)
    assert int(result.stats.nonfinite) == 0


def test_the_langevin_corrector_skips_the_data_end_of_the_default_grid():
    """Its last move is at t = 0 on the linear path, where sigma = 0: skipped, no model call."""
    x = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
    gmm = ref.mixture()
    sampler = its.refine.langevin(gmm.velocity(LINEAR), LINEAR)
    result = its.run(sampler, jax.random.key(1), x, num_steps=4, trace=1)
    assert int(result.stats.nfe) == 5 * 3
    np.testing.assert_array_equal(result.trace.info["log_prob"][-1], np.zeros(5))
    old_default = its.refine.langevin(gmm.velocity(LINEAR), LINEAR, grid=its.paths.Grid())
    old = its.run(old_default, jax.random.key(1), x, num_steps=4)
    assert int(old.stats.nfe) == 5 * 4


def test_sde_with_the_default_grid_samples_the_data_law():
    """Euler--Maruyama on the linear path with the default grid ends with the denoising step at t = 0: its
    samples match the mixture's own moments (not those of p_{1e-3}) and get closer with more steps."""
    gmm = ref.mixture()
    x1 = jax.random.normal(jax.random.key(0), (16384, 2), jnp.float64)
    sampler = its.refine.sde(gmm.velocity(LINEAR), LINEAR, g="sigma")

    def moment_error(x):
        mean_error = jnp.linalg.norm(x.mean(0) - gmm.mean())
        return float(mean_error + jnp.linalg.norm(jnp.cov(x.T) - gmm.covariance()))

    errors = [moment_error(its.run(sampler, jax.random.key(1), x1, num_steps=n).output) for n in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.08, errors


STEPS = (16, 32, 64)


@pytest.fixture(scope="module")
def heun_errors():
    velocity = ref.mixture().velocity(LINEAR)
    x = ref.noise()
    reference = ref.reference_solve(velocity, x, 1.0, 0.0)            # the flow's x at t = 0
    rk4 = its.run(its.refine.ode(velocity, "rk4"), jax.random.key(1), x, num_steps=512).output
    assert float(jnp.sqrt(jnp.mean((rk4 - reference) ** 2))) < 1e-10  # two references to t = 0 agree
    samplers = {"default": its.refine.ode(velocity, "heun"),
                "old default": its.refine.ode(velocity, "heun", grid=its.paths.Grid("uniform", t_min=1e-3))}
    return ref.errors(samplers, x, reference, STEPS)


def test_heun_on_the_default_grid_converges_at_order_2_to_the_data(heun_errors):
    errs = heun_errors["default"]
    ref.assert_order(STEPS, errs, 2)
    assert errs[-1] < 1e-4, errs


def test_heun_stopping_at_1e_minus_3_plateaus(heun_errors):
    """The old default: the error against x(0) flattens at the bias of stopping at t = 1e-3."""
    errs = heun_errors["old default"]
    assert np.all(errs > 1e-3), errs
    assert errs[-2] / errs[-1] < 1.2, errs                            # a plateau, not n^-2
    assert ref.measured_order(STEPS, errs) < 0.5, errs
    assert errs[-1] > 10 * heun_errors["default"][-1]
