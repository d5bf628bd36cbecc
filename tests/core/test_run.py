import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from tests.core.helpers import euler, noisy


def test_euler_matches_closed_form_and_counts_nfe():
    x = jnp.arange(8.0).reshape(4, 2)
    result = its.run(euler(), jax.random.key(0), x, num_steps=10)
    np.testing.assert_allclose(result.output, x * 1.1 ** 10, rtol=1e-5)
    assert int(result.stats.nfe) == 4 * 10
    assert float(result.stats.nfe_per_sample) == 10.0
    assert int(result.stats.verifier_calls) == 0
    assert int(result.stats.steps) == 10
    assert int(result.stats.nonfinite) == 0 and int(result.stats.first_nonfinite_step) == -1
    assert result.trace is None


def test_params_change_value_without_retrace_but_budget_change_retraces():
    base = euler()
    traced = chex.assert_max_traces(base.step, n=1)
    sampler = base._replace(step=traced)
    x = jnp.ones((3, 2))
    a = its.run(sampler, jax.random.key(0), x, num_steps=7, params={"scale": 1.0})
    b = its.run(sampler, jax.random.key(0), x, num_steps=7, params={"scale": 0.5})
    c = its.run(sampler, jax.random.key(0), x, num_steps=7, params={"scale": jnp.float32(2.0)})
    np.testing.assert_allclose(a.output, (1 + 1 / 7) ** 7 * x, rtol=1e-5)
    np.testing.assert_allclose(b.output, (1 + 0.5 / 7) ** 7 * x, rtol=1e-5)
    np.testing.assert_allclose(c.output, (1 + 2 / 7) ** 7 * x, rtol=1e-5)
    with pytest.raises(AssertionError):  # a new budget is a new compilation, so the step is traced again
        its.run(sampler, jax.random.key(0), x, num_steps=8)


def test_default_params_are_used_when_none():
    x = jnp.ones((2, 2))
    a = its.run(euler(), jax.random.key(0), x, num_steps=5)
    b = its.run(euler(), jax.random.key(0), x, num_steps=5, params={"scale": 1.0})
    np.testing.assert_array_equal(a.output, b.output)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("10", TypeError), (None, TypeError)])
def test_bad_num_steps_is_named(bad, error):
    with pytest.raises(error, match="num_steps"):
        its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=bad)


def test_numpy_integer_budget_is_accepted():
    result = its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=np.int64(4))
    assert int(result.stats.steps) == 4


@pytest.mark.parametrize("params", [{"scale": 1.0, "extra": 2.0}, {"other": 1.0}, (1.0,), {"scale": jnp.ones(3)}])
def test_params_with_another_structure_are_rejected_before_compute(params):
    with pytest.raises(ValueError, match="params"):
        its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=3, params=params)


def test_bad_key_and_sampler_are_named():
    with pytest.raises(TypeError, match="key"):
        its.run(euler(), 0, jnp.ones((2, 2)), num_steps=3)
    with pytest.raises(TypeError, match="sampler"):
        its.run(lambda x: x, jax.random.key(0), jnp.ones((2, 2)), num_steps=3)
    with pytest.raises(TypeError, match="trace"):
        its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=3, trace="all")
    with pytest.raises(ValueError, match="every"):
        its.run(euler(), jax.random.key(0), jnp.ones((2, 2)), num_steps=3, trace=4)


def test_trace_every_k_records_the_states_after_those_steps():
    x = jnp.ones((2, 2))
    result = its.run(euler(), jax.random.key(0), x, num_steps=10, trace=3)
    np.testing.assert_array_equal(result.trace.step, [3, 6, 9])
    for i, k in enumerate([3, 6, 9]):
        np.testing.assert_allclose(result.trace.state[i], x * 1.1 ** k, rtol=1e-5)
        np.testing.assert_allclose(result.trace.info["norm"][i], 2 * 1.1 ** (k - 1), rtol=1e-5)
    np.testing.assert_allclose(result.output, x * 1.1 ** 10, rtol=1e-5)  # remainder steps still run
    assert int(result.stats.nfe) == 2 * 10


def test_trace_function_and_saveat():
    x = jnp.ones((2, 2))
    result = its.run(euler(), jax.random.key(0), x, num_steps=4, trace=lambda s: s.sum())
    np.testing.assert_allclose(result.trace.state, [4 * 1.25 ** k for k in range(1, 5)], rtol=1e-5)
    result = its.run(euler(), jax.random.key(0), x, num_steps=4, trace=its.SaveAt(every=2, fn=jnp.max))
    np.testing.assert_allclose(result.trace.state, [1.25 ** 2, 1.25 ** 4], rtol=1e-5)


def test_nonfinite_values_are_counted_with_the_first_step():
    def blow_up(key, x, ctx, params):
        return jnp.where(ctx.step >= 3, x / 0.0 * 0.0, x), {}

    result = its.run(its.Sampler(lambda k, x, p: x, blow_up, lambda x: x), jax.random.key(0), jnp.ones((2, 3)),
                     num_steps=5)
    assert int(result.stats.first_nonfinite_step) == 3
    assert int(result.stats.nonfinite) == 2 * 3 * 2  # 6 NaNs after each of steps 3 and 4


def test_nonfinite_tally_over_scalar_leaves_and_leaves_of_other_lengths():
    def spoil(key, state, ctx, params):  # a NaN in row 2 of "rows" from step 2, an inf scalar at step 1 only
        rows = jnp.where((ctx.step >= 2) & (jnp.arange(4) == 2)[:, None], jnp.nan, state["rows"])
        scalar = jnp.where(ctx.step == 1, jnp.inf, 0.0).astype(state["scalar"].dtype)
        return {"rows": rows, "scalar": scalar, "ints": state["ints"],
                "short": state["short"]}, {}

    state = {"rows": jnp.ones((4, 3)), "scalar": jnp.float32(0), "ints": jnp.arange(4), "short": jnp.ones(2)}
    result = its.run(its.Sampler(lambda k, x, p: x, spoil, lambda x: x), jax.random.key(0), state, num_steps=5)
    assert int(result.stats.first_nonfinite_step) == 1
    assert int(result.stats.nonfinite) == 1 + 3 * 3  # the scalar once; row 2's 3 values after steps 2, 3, 4


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_count_nonfinite_counts_every_kind_in_mixed_leaves(bad):
    from itscale.core.run import count_nonfinite

    tree = {"ints": jnp.arange(4), "f32": jnp.ones((3, 5)).at[1, 2].set(bad).at[2, 4].set(bad),
            "f64": np.full((2,), bad), "c64": jnp.ones((2,), jnp.complex64).at[0].set(bad),
            "finite_huge": np.full((2,), 3e38, np.float32)}
    assert int(jax.jit(count_nonfinite)(tree)) == 5
    clean = {"ints": jnp.arange(4), "f32": jnp.ones((3, 5)), "huge": np.full((2,), 3e38, np.float32)}
    assert int(jax.jit(count_nonfinite)(clean)) == 0 and int(count_nonfinite({"ints": jnp.arange(3)})) == 0


def test_same_key_same_bits_and_different_keys_differ():
    x = jnp.zeros((4, 2))
    a = its.run(noisy(), jax.random.key(3), x, num_steps=5).output
    b = its.run(noisy(), jax.random.key(3), x, num_steps=5).output
    c = its.run(noisy(), jax.random.key(4), x, num_steps=5).output
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_raw_uint32_keys_are_accepted_and_run_works_under_vmap():
    x = jnp.zeros((4, 2))
    out = its.run(noisy(), jax.random.PRNGKey(0), x, num_steps=3).output
    assert out.shape == x.shape
    keys = jax.random.split(jax.random.key(0), 3)
    nfe = jax.vmap(lambda k: its.run(noisy(), k, x, num_steps=3).stats.nfe)(keys)
    np.testing.assert_array_equal(nfe, [12, 12, 12])


def test_model_output_check_names_the_model():
    from itscale.core import checks

    with pytest.raises(ValueError, match="velocity_fn returned shape"):
        checks.model_output("velocity_fn", jnp.ones((2, 3)), jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="velocity_fn returned dtype"):
        checks.model_output("velocity_fn", jnp.ones((2, 2), jnp.int32), jnp.ones((2, 2)))
