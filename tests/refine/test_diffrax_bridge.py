"""diffrax bridge: fixed steps equal itscale's own solvers; adaptive solves are accurate and report the
NFE they actually spend (checked against a runtime count of real vector-field executions)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.diffrax_bridge import evaluation_counts

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0, 0.5], [1.5, -0.5]]),
    3.0 * jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.05], [-0.05, 0.4]]]))
PATH = its.paths.linear()
VELOCITY = GMM.velocity(PATH)
X1 = jax.random.normal(jax.random.key(0), (16, 2))


def test_measured_evaluation_counts_follow_diffrax_conventions():
    """(controller init, solver init, first step, later step): Hairer's initial step costs 2, Tsit5 is
    first-same-as-last (7 evaluations on the first step, 6 after)."""
    assert evaluation_counts(diffrax.Euler()) == (2, 0, 1, 1)
    assert evaluation_counts(diffrax.Heun()) == (2, 0, 2, 2)
    assert evaluation_counts(diffrax.Tsit5()) == (2, 0, 7, 6)


@pytest.mark.parametrize("name,solver,nfe", [("euler", diffrax.Euler(), 1), ("heun", diffrax.Heun(), 2)])
def test_fixed_steps_equal_the_itscale_solver(name, solver, nfe):
    bridge = its.run(its.refine.diffrax_ode(VELOCITY, solver, path=PATH), jax.random.key(1), X1, num_steps=12,
                     trace=1)
    own = its.run(its.refine.ode(VELOCITY, name, path=PATH), jax.random.key(1), X1, num_steps=12, trace=1)
    np.testing.assert_allclose(bridge.output, own.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bridge.trace.info["x0_hat"], own.trace.info["x0_hat"], rtol=1e-9, atol=1e-12)
    assert int(bridge.stats.nfe) == int(own.stats.nfe) == 16 * 12 * nfe


def test_fixed_step_tsit5_counts_its_seven_stages():
    sampler = its.refine.diffrax_ode(VELOCITY, diffrax.Tsit5(), grid="quadratic")
    result = its.run(sampler, jax.random.key(1), X1, num_steps=4)
    assert int(result.stats.nfe) == 16 * 4 * 7


def runtime_counted(velocity):
    """``velocity`` plus a host-side count of how many times it actually executes (not traces)."""
    calls = [0]

    def bump():
        calls[0] += 1

    def fn(x, t):
        jax.debug.callback(bump)
        return velocity(x, t)

    return fn, calls


COUNTED_VELOCITY, CALLS = runtime_counted(VELOCITY)
ADAPTIVE = its.refine.adaptive(COUNTED_VELOCITY, rtol=1e-7, atol=1e-7)  # one sampler: one compilation


def run_adaptive(**params):
    """Run ADAPTIVE once (trace every step) and return the result and the vector field's real executions."""
    before = CALLS[0]
    params = {**ADAPTIVE.params, **params}
    result = its.run(ADAPTIVE, jax.random.key(1), X1, num_steps=1, params=params, trace=1)
    jax.effects_barrier()
    return result, CALLS[0] - before


def test_adaptive_reports_the_nfe_it_spends_and_converges_with_tolerance():
    result, calls = run_adaptive()
    info = jax.tree.map(lambda a: a[0], result.trace.info)
    assert bool(info["successful"])
    assert int(result.stats.nfe) == 16 * calls == 16 * int(info["evaluations"])
    assert calls == 2 + 7 + 6 * (int(info["accepted_steps"]) + int(info["rejected_steps"]) - 1)
    loose, loose_calls = run_adaptive(rtol=1e-3, atol=1e-3)
    tight, tight_calls = run_adaptive(rtol=1e-11, atol=1e-11)
    assert loose_calls < calls / 2 < tight_calls / 2
    error, loose_error = (float(jnp.abs(r.output - tight.output).max()) for r in (result, loose))
    assert error < 1e-5 < loose_error, (error, loose_error)
    assert int(tight.stats.nonfinite) == 0


def test_adaptive_loop_takes_the_steps_diffeqsolve_takes():
    """Same first step: the same accepted/rejected steps and solution as diffrax.diffeqsolve on the
    time-reversed field (s = -t)."""
    fn, calls = runtime_counted(VELOCITY)
    sampler = its.refine.adaptive(fn, rtol=1e-6, atol=1e-6, dt0=0.05)
    result = its.run(sampler, jax.random.key(1), X1, num_steps=1, trace=1)
    jax.effects_barrier()
    assert int(result.stats.nfe) == 16 * calls[0]
    reversed_field = diffrax.ODETerm(lambda s, y, a: -VELOCITY(y, -s))
    # the default grid (no path): t from 1 to 0, s = -t from -1 to 0
    reference = diffrax.diffeqsolve(reversed_field, diffrax.Tsit5(), -1.0, 0.0, 0.05, X1,
                                    stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6))
    info = result.trace.info
    assert int(info["accepted_steps"][0]) == int(reference.stats["num_accepted_steps"])
    assert int(info["rejected_steps"][0]) == int(reference.stats["num_rejected_steps"])
    assert calls[0] == int(info["evaluations"][0]) == 7 + 6 * (int(reference.stats["num_steps"]) - 1)
    np.testing.assert_allclose(result.output, reference.ys[-1], rtol=1e-12, atol=1e-12)


def test_running_out_of_steps_is_reported_not_hidden():
    result = its.run(its.refine.adaptive(VELOCITY, rtol=1e-9, atol=1e-9, max_steps=3), jax.random.key(1), X1,
                     num_steps=1, trace=1)
    assert not bool(result.trace.info["successful"][0])
    assert int(result.stats.nonfinite) == X1.size


def test_bad_solvers():
    with pytest.raises(ValueError, match="implicit"):
        its.refine.diffrax_ode(VELOCITY, diffrax.Kvaerno5())
    with pytest.raises(TypeError, match="diffrax solver"):
        its.refine.adaptive(VELOCITY, solver="tsit5")
    with pytest.raises(ValueError, match="max_steps"):
        its.refine.adaptive(VELOCITY, max_steps=0)
