"""``its.refine.ode`` runs a solver of one's own: a :class:`itscale.refine.Solver` record, or an explicit
Runge--Kutta method as a Butcher :class:`itscale.refine.Tableau`, whose order is read from the order
conditions. Convergence is measured as in ``test_ode_order_runge_kutta`` (float64, exact mixture velocity,
Dopri8 reference at rtol 1e-12 from the same noise), on the default grid, which runs t: 1 -> 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.solvers.runge_kutta import RK4, LOOP_MIN_SIZE, euler, order_conditions
from tests.refine import ode_helpers as ref

jax.config.update("jax_enable_x64", True)

Tableau = its.refine.Tableau
RALSTON = Tableau(a=((), (2 / 3,)), b=(1 / 4, 3 / 4), c=(0.0, 2 / 3))
KUTTA_3 = Tableau(a=((), (1 / 2,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 1 / 2, 1.0))
THREE_EIGHTHS = Tableau(a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
                        c=(0.0, 1 / 3, 2 / 3, 1.0))
STEPS = (8, 16, 32)


def test_exported_from_refine():
    assert its.refine.Tableau is its.refine.solvers.Tableau
    assert its.refine.Solver is its.refine.solvers.Solver
    assert {"Tableau", "Solver", "runge_kutta", "tableau_order"} <= set(its.refine.__all__)


@pytest.mark.parametrize("tableau, order", [
    (Tableau(a=((),), b=(1.0,), c=(0.0,)), 1),
    (RALSTON, 2),
    (KUTTA_3, 3),
    (RK4, 4),
    (THREE_EIGHTHS, 4),
    (Tableau(a=((), (1.0,), (0.25, 0.25)), b=(1 / 6, 1 / 6, 2 / 3), c=(0.0, 1.0, 0.5)), 3),   # SSPRK3
    (Tableau(a=((), (1.0,)), b=(1.0, 0.0), c=(0.0, 1.0)), 1),             # consistent, b.c = 0: order 1
])
def test_order_is_read_from_the_order_conditions(tableau, order):
    assert its.refine.tableau_order(tableau) == order
    assert its.refine.runge_kutta("mine", tableau).order == order
    assert its.refine.ode(ref.decay, tableau).params is None


def test_order_conditions_of_rk4_are_the_eight_of_butcher():
    conditions = order_conditions(RK4)
    assert [len(conditions[p]) for p in (1, 2, 3, 4)] == [1, 1, 2, 4]
    for p in conditions:
        for value, required in conditions[p]:
            assert value == pytest.approx(required, abs=1e-14)


def test_a_square_numpy_matrix_is_accepted():
    square = Tableau(a=np.array([[0.0, 0.0], [2 / 3, 0.0]]), b=np.array([0.25, 0.75]),
                     c=np.array([0.0, 2 / 3]))
    assert its.refine.tableau_order(square) == 2


def test_a_declared_order_is_kept_unless_the_conditions_refute_it():
    assert its.refine.runge_kutta("ralston", RALSTON, order=1).order == 1
    with pytest.raises(ValueError, match=r"^order=3 is above the order 2"):
        its.refine.runge_kutta("ralston", RALSTON, order=3)


@pytest.fixture(scope="module")
def ralston_errors():
    return ref.mixture_errors(lambda velocity: {"ralston": its.refine.ode(velocity, RALSTON),
                                                "heun": its.refine.ode(velocity, "heun")}, STEPS)


def test_ralston_as_a_tableau_converges_at_order_2(ralston_errors):
    ref.assert_order(STEPS, ralston_errors["ralston"], 2)
    assert not np.allclose(ralston_errors["ralston"], ralston_errors["heun"]), "a different method than Heun's"


@pytest.mark.parametrize("size", [(5, 2), (LOOP_MIN_SIZE // 2 + 1, 2)], ids=["unrolled", "looped"])
def test_rk4_as_a_tableau_is_bit_identical_to_the_named_solver(size):
    x = jax.random.normal(jax.random.key(0), size, jnp.float32)
    velocity = ref.wave
    named = its.run(its.refine.ode(velocity, "rk4"), jax.random.key(1), x, num_steps=7)
    tableau = its.run(its.refine.ode(velocity, RK4), jax.random.key(1), x, num_steps=7)
    np.testing.assert_array_equal(np.asarray(tableau.output), np.asarray(named.output))
    assert int(tableau.stats.nfe) == int(named.stats.nfe) == size[0] * 7 * 4


def test_a_copy_of_a_builtin_record_runs_with_exact_nfe():
    mine = euler._replace(name="my_euler", reference="")
    x = ref.x32((6, 2))
    result = its.run(its.refine.ode(ref.wave, mine), jax.random.key(0), x, num_steps=5)
    builtin = its.run(its.refine.ode(ref.wave, "euler"), jax.random.key(0), x, num_steps=5)
    np.testing.assert_array_equal(np.asarray(result.output), np.asarray(builtin.output))
    assert int(result.stats.nfe) == 6 * 5 * mine.nfe_per_step == 30


def _two_euler_half_steps(model, state, clock, key, params):
    """A solver of one's own: two Euler steps of half the grid step (2 NFE per step)."""
    x, t = state.x, clock.t()
    h = (clock.t(1) - t) / 2
    first = model.velocity(x, t)
    middle = (x + h * first).astype(x.dtype)
    x_next = (middle + h * model.velocity(middle, t + h)).astype(x.dtype)
    return state._replace(x=x_next), model.info(first, x, t)


def test_a_solver_of_ones_own_runs_with_its_model_calls_counted():
    from itscale.refine.solvers.runge_kutta import RungeKuttaState

    mine = its.refine.Solver(name="euler_halves", order=1, nfe_per_step=2, needs_path=False,
                             init=RungeKuttaState, step=_two_euler_half_steps)
    x = ref.x32((4, 2))
    grid = np.linspace(1.0, 0.0, 7)
    result = its.run(its.refine.ode(ref.wave, mine, grid=grid), jax.random.key(0), x, num_steps=6)
    assert int(result.stats.nfe) == 4 * 6 * 2
    twice = its.refine.ode(ref.wave, "euler", grid=np.linspace(1.0, 0.0, 13))
    euler_twice = its.run(twice, jax.random.key(0), x, num_steps=12)
    np.testing.assert_allclose(result.output, euler_twice.output, rtol=1e-6, atol=1e-6)
    path = its.paths.linear()
    with_path = its.run(its.refine.ode(ref.wave, mine, path=path), jax.random.key(0), x, num_steps=3, trace=1)
    assert set(with_path.trace.info) == {"x0_hat"}


def test_a_record_needing_the_path_asks_for_it_by_its_name():
    mine = euler._replace(name="needs_it", needs_path=True)
    with pytest.raises(ValueError, match=r"^solver 'needs_it' works with x0 / eps predictions"):
        its.refine.ode(ref.decay, mine)


@pytest.mark.parametrize("solver", [3, None, ("euler",), {"name": "euler"}, RK4[:2], euler.step],
                         ids=["int", "None", "tuple", "dict", "plain tuple", "function"])
def test_other_solver_types_are_refused_listing_the_accepted_forms(solver):
    accepted = (r"^solver must be a name in itscale.refine.SOLVERS .* an itscale.refine.Solver record or an "
                r"explicit Runge--Kutta method as an itscale.refine.Tableau\(a, b, c\)")
    with pytest.raises(TypeError, match=accepted):
        its.refine.ode(ref.decay, solver)


def test_unknown_solver_names_still_list_the_names():
    with pytest.raises(ValueError, match="unknown solver 'ralston'.*'euler'"):
        its.refine.ode(ref.decay, "ralston")


@pytest.mark.parametrize("tableau, error, message", [
    (Tableau(a=((), (1.0,)), b=(0.5,), c=(0.0, 1.0)), ValueError, r"^solver\.c must hold one node per stage"),
    (Tableau(a=((),), b=(0.5, 0.5), c=(0.0, 1.0)), ValueError, r"^solver\.a must hold one row per stage"),
    (Tableau(a=((), (1.0,)), b=(), c=()), ValueError, r"^solver\.b must hold at least one weight"),
    (Tableau(a=((1.0,), (1.0,)), b=(0.5, 0.5), c=(1.0, 1.0)), ValueError,
     r"^solver\.a must be strictly lower triangular"),
    (Tableau(a=((), (1.0, 0.5)), b=(0.5, 0.5), c=(0.0, 1.5)), ValueError,
     r"^solver\.a must be strictly lower triangular"),
    (Tableau(a=((), (1.0, 0.0, 0.0)), b=(0.5, 0.5), c=(0.0, 1.0)), ValueError, r"^solver\.a must be 2 x 2"),
    (Tableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 0.9)), ValueError,
     r"^solver\.c must hold the row sums of a .* c\[1\] = 0.9"),
    (Tableau(a=((), (1.0,)), b=(0.5, 0.6), c=(0.0, 1.0)), ValueError, r"^solver\.b must sum to 1"),
    (Tableau(a=((), (1.0,)), b=(0.5, float("nan")), c=(0.0, 1.0)), ValueError,
     r"^solver\.b\[1\] must be finite"),
    (Tableau(a=((), ("x",)), b=(0.5, 0.5), c=(0.0, 1.0)), TypeError, r"^solver\.a\[1\]\[0\] must be a real"),
    (Tableau(a=None, b=(1.0,), c=(0.0,)), TypeError, r"^solver\.a must be a sequence"),
    (Tableau(a=((),), b=1.0, c=(0.0,)), TypeError, r"^solver\.b must be a sequence"),
])
def test_bad_tableaus_are_refused_naming_the_field(tableau, error, message):
    with pytest.raises(error, match=message):
        its.refine.ode(ref.decay, tableau)
    with pytest.raises(error, match=message.replace("solver", "tableau")):
        its.refine.runge_kutta("bad", tableau)


@pytest.mark.parametrize("field, value, error", [
    ("name", 3, TypeError), ("order", 0, ValueError), ("order", 1.5, TypeError),
    ("nfe_per_step", 0, ValueError), ("needs_path", "no", TypeError), ("init", None, TypeError),
    ("step", 1, TypeError), ("schedule", 2, TypeError),
])
def test_bad_solver_records_are_refused_naming_the_field(field, value, error):
    with pytest.raises(error, match=rf"^solver\.{field} must"):
        its.refine.ode(ref.decay, euler._replace(**{field: value}))
