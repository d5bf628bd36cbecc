"""``its.refine.ode``: exact NFE, declarations, state layout, errors on bad input, retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine import SOLVERS
from tests.refine.ode_helpers import decay, x32

PATH = its.paths.linear()
SOLVER_NAMES = list(SOLVERS)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_nfe_is_exact_and_declared(solver):
    sampler = its.refine.ode(decay, solver, path=PATH)
    result = its.run(sampler, jax.random.key(0), x32((3, 2)), num_steps=5)
    per_step = SOLVERS[solver].nfe_per_step
    assert int(result.stats.nfe) == 3 * 5 * per_step
    assert float(result.stats.nfe_per_sample) == 5 * per_step
    assert result.output.shape == (3, 2) and result.output.dtype == jnp.float32
    assert int(result.stats.nonfinite) == 0


@pytest.mark.parametrize("solver", ["heun", "midpoint", "rk4"])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_faulty_row_leaves_the_other_rows_alone(solver, bad):
    """A non-finite velocity in the first row (the one the stages' time ordering reads) changes no
    other row's result and is counted."""
    def velocity(x, t):
        return jnp.where(jnp.arange(x.shape[0])[:, None] == 0, bad, -x * (1.0 + t))

    x = x32((4, 2))
    faulty = its.run(its.refine.ode(velocity, solver), jax.random.key(0), x, num_steps=4)
    clean = its.run(its.refine.ode(lambda x, t: -x * (1.0 + t), solver), jax.random.key(0), x, num_steps=4)
    np.testing.assert_array_equal(faulty.output[1:], clean.output[1:])
    assert int(faulty.stats.nonfinite) > 0 and int(clean.stats.nonfinite) == 0


@pytest.mark.parametrize("solver", ["heun", "midpoint", "rk4"])
def test_stages_in_a_loop_for_large_states_match_the_unrolled_stages(solver):
    """States of LOOP_MIN_SIZE entries or more run the Runge-Kutta stages in a loop: the same values
    as the unrolled stages of a small batch, row by row, and the same exact NFE."""
    from itscale.refine.solvers.runge_kutta import LOOP_MIN_SIZE

    x = jax.random.normal(jax.random.key(0), (LOOP_MIN_SIZE // 2, 2))
    sampler = its.refine.ode(lambda x, t: jnp.sin(3.0 * x) * (1.0 + t) - x, solver)
    large = its.run(sampler, jax.random.key(0), x, num_steps=5)
    small = its.run(sampler, jax.random.key(0), x[:8], num_steps=5)
    np.testing.assert_allclose(large.output[:8], small.output, rtol=1e-6, atol=1e-6)
    assert int(large.stats.nfe) == x.shape[0] * 5 * SOLVERS[solver].nfe_per_step


def test_declarations():
    assert {n: (s.order, s.nfe_per_step) for n, s in SOLVERS.items()} == {
        "euler": (1, 1), "heun": (2, 2), "midpoint": (2, 2), "rk4": (4, 4), "ddim": (1, 1),
        "dpm_solver_pp_2m": (2, 1), "unipc": (3, 1), "deis_2": (2, 1), "deis_3": (3, 1)}
    assert [n for n, s in SOLVERS.items() if s.needs_path] == ["ddim", "dpm_solver_pp_2m", "unipc", "deis_2",
                                                               "deis_3"]


def test_euler_closed_form_on_uniform_grid():
    """u = -x: each Euler step from t to t - h multiplies x by (1 + h)."""
    times = np.linspace(1.0, 0.0, 11)
    result = its.run(its.refine.ode(decay, "euler", grid=times), jax.random.key(0), jnp.ones((2, 2)),
                     num_steps=10)
    np.testing.assert_allclose(result.output, 1.1**10 * np.ones((2, 2)), rtol=1e-6)


def test_info_is_empty_without_path():
    result = its.run(its.refine.ode(decay, "rk4"), jax.random.key(0), x32(), num_steps=2, trace=1)
    assert result.trace.info == {}


def test_state_leaves_lead_with_the_batch_axis():
    for solver in SOLVER_NAMES:
        state = its.refine.ode(decay, solver, path=PATH).init(jax.random.key(0), x32((5, 2)), None)
        assert "x" in state._fields
        assert all(leaf.shape == (5, 2) for leaf in jax.tree.leaves(state)), solver


def test_same_budget_new_inputs_do_not_retrace():
    base = its.refine.ode(decay, "dpm_solver_pp_2m", path=PATH)
    sampler = base._replace(step=chex.assert_max_traces(base.step, n=1))
    for seed in range(3):
        its.run(sampler, jax.random.key(seed), x32(seed=seed), num_steps=4)


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_solver_lists_the_choices():
    with pytest.raises(ValueError, match="solver.*'euler'.*'unipc'"):
        its.refine.ode(decay, "rk45")


@pytest.mark.parametrize("solver", ["ddim", "dpm_solver_pp_2m", "unipc"])
def test_exponential_solvers_name_the_missing_path(solver):
    with pytest.raises(ValueError, match="path="):
        its.refine.ode(decay, solver)


BAD_GRIDS = [([1.0, 0.5, 0.7, 0.0], "decreasing"), ([0.0, 0.5, 1.0], "decreasing"),
             ([1.2, 0.5, 0.0], r"\[0, 1\]"), ([[1.0, 0.0]], "1-D")]


@pytest.mark.parametrize("times, match", BAD_GRIDS)
def test_bad_explicit_grid(times, match):
    with pytest.raises(ValueError, match=match):
        its.refine.ode(decay, "euler", grid=np.asarray(times))


def test_explicit_grid_fixes_the_number_of_steps():
    sampler = its.refine.ode(decay, "euler", grid=np.linspace(1.0, 0.0, 5))
    with pytest.raises(ValueError, match="num_steps=4"):
        its.run(sampler, jax.random.key(0), x32(), num_steps=6)


def test_bad_grid_kind_and_grid_needing_path():
    with pytest.raises(ValueError, match="grid.*'uniform'"):
        its.refine.ode(decay, "euler", grid="cosine")
    with pytest.raises(ValueError, match="path="):
        its.refine.ode(decay, "euler", grid="log_snr")


def test_bad_arguments_are_typed():
    with pytest.raises(TypeError, match="velocity_fn"):
        its.refine.ode("not a function", "euler")
    with pytest.raises(TypeError, match="path"):
        its.refine.ode(decay, "euler", path="linear")
    with pytest.raises(TypeError, match="floating"):
        its.run(its.refine.ode(decay), jax.random.key(0), jnp.ones((2, 2), jnp.int32), num_steps=2)


def test_model_output_shape_and_dtype_are_checked_before_compute():
    with pytest.raises(ValueError, match="velocity_fn returned shape"):
        its.run(its.refine.ode(lambda x, t: x[:, :1]), jax.random.key(0), x32(), num_steps=2)
    with pytest.raises(TypeError, match="velocity_fn returned dtype"):
        its.run(its.refine.ode(lambda x, t: x.astype(jnp.float16)), jax.random.key(0), x32(), num_steps=2)


@pytest.mark.parametrize("solver", ["ddim", "dpm_solver_pp_2m", "unipc", "deis_2", "deis_3"])
def test_a_nonfinite_model_output_is_counted_at_its_step_by_the_multistep_solvers(solver):
    """``its.run`` watches only x of an ODE state; a model output that is non-finite at one step (t = 0.5,
    step 2 of 4) reaches x in that step, also for the solvers that keep it in their history."""
    def velocity(x, t):
        return jnp.where(jnp.abs(t - 0.5) < 0.1, jnp.nan, -x * (1.0 + t))

    result = its.run(its.refine.ode(velocity, solver, path=its.paths.linear()), jax.random.key(0), x32((4, 2)),
                     num_steps=4)
    assert int(result.stats.first_nonfinite_step) == 2 and int(result.stats.nonfinite) > 0
