"""NFE accounting is exact under vmap, scan, cond, switch and while_loop, and refuses to miscount."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import itscale as its
from itscale import core
from tests.core.helpers import carried_copies


def model(x, t=0.0):
    return 0.5 * x


def run_step(step_fn, x, num_steps=3):
    sampler = its.Sampler(lambda k, x, p: x, lambda k, s, ctx, p: (step_fn(s, ctx), {}), lambda s: s)
    return its.run(sampler, jax.random.key(0), x, num_steps=num_steps)


def test_plain_calls_count_batch_size_per_step():
    f = core.counted(model)
    result = run_step(lambda x, ctx: f(f(x)), jnp.ones((5, 2)))
    assert int(result.stats.nfe) == 2 * 5 * 3


def test_vmap_sums_over_the_mapped_axis():
    f = core.counted(model)
    result = run_step(lambda x, ctx: core.vmap(f)(x), jnp.ones((4, 6, 2)))  # 4 groups of batch 6
    assert int(result.stats.nfe) == 4 * 6 * 3


def test_vmap_over_single_examples_needs_a_declared_meaning():
    """Mapped over 4 single samples of dimension 6, the default cost would read 6 per call: ambiguous."""
    f = core.counted(model)
    with pytest.raises(ValueError, match="rows='batched'.*rows='single'.*explicit cost"):
        run_step(lambda x, ctx: core.vmap(f)(x), jnp.ones((4, 6)))
    single = run_step(lambda x, ctx: core.vmap(f, rows="single")(x), jnp.ones((4, 6)))
    assert int(single.stats.nfe) == 4 * 3
    batched = run_step(lambda x, ctx: core.vmap(f, rows="batched")(x), jnp.ones((4, 6)))
    assert int(batched.stats.nfe) == 4 * 6 * 3                         # declared: each row of 6 is a batch
    explicit = core.counted(model, cost=lambda x: 2)
    assert int(run_step(lambda x, ctx: core.vmap(explicit)(x), jnp.ones((4, 6))).stats.nfe) == 4 * 2 * 3
    with pytest.raises(ValueError, match="rows must be one of"):
        core.vmap(f, rows="rows")


def test_particles_of_single_samples_count_one_per_particle():
    ode = its.refine.ode(lambda x, t: -x)
    with pytest.raises(ValueError, match="ambiguous|rows="):
        its.run(its.particles(ode, 5), jax.random.key(0), jnp.ones((5, 3)), num_steps=2)
    result = its.run(its.particles(ode, 5, rows="single"), jax.random.key(0), jnp.ones((5, 3)), num_steps=2)
    assert int(result.stats.nfe) == 5 * 2


def test_scan_counts_every_iteration():
    f = core.counted(model)

    def step(x, ctx):
        return core.scan(lambda c, _: (f(c), None), x, None, length=7)[0]

    assert int(run_step(step, jnp.ones((2, 2))).stats.nfe) == 7 * 2 * 3


def test_cond_counts_only_the_branch_taken_at_run_time():
    f = core.counted(model)

    def step(x, ctx):  # two calls on even steps, none on odd steps
        return core.cond(ctx.step % 2 == 0, lambda y: f(f(y)), lambda y: y, x)

    assert int(run_step(step, jnp.ones((3, 2)), num_steps=5).stats.nfe) == 3 * 2 * 3  # steps 0, 2, 4


def test_unless_runs_and_counts_only_while_not_done_and_copies_no_carried_state():
    f = core.counted(model)

    def step(x, ctx):  # two calls on steps 0 and 1, none after
        return core.unless(ctx.step >= 2, lambda y: f(f(y)), x)

    result = run_step(step, jnp.ones((3, 2)), num_steps=5)
    assert int(result.stats.nfe) == 3 * 2 * 2
    np.testing.assert_array_equal(result.output, 0.5 ** 4)

    # A loop whose step updates a large array until done: the cond's identity branch copies it (and the
    # cond's result is copied back into the loop carry); unless updates it in place.
    big = jnp.zeros((64, 4096), jnp.float32)

    def loop(skip, state):
        def body(state, i):
            return skip(i >= 3, lambda s: s.at[i].add(1.0), state), None
        return lax.scan(body, state, jnp.arange(8))[0]

    assert carried_copies(loop, lambda done, fn, s: lax.cond(done, lambda s: s, fn, s), big) != []
    assert carried_copies(loop, core.unless, big) == []
    np.testing.assert_array_equal(jax.jit(loop, static_argnums=0)(core.unless, big)[:4, 0], [1, 1, 1, 0])


def test_switch_and_while_loop_count_what_runs():
    f = core.counted(model)

    def step(x, ctx):
        x = core.switch(ctx.step, [lambda y: f(y), lambda y: f(f(y)), lambda y: y], x)
        # data-dependent loop: halve until the max entry is below 1 (starting from 16: 5 calls)
        return core.while_loop(lambda y: jnp.max(y) >= 1.0, f, x * 0 + 16.0)

    result = run_step(step, jnp.ones((2, 2)), num_steps=3)
    assert int(result.stats.nfe) == 2 * ((1 + 2 + 0) + 3 * 5)


def test_nested_vmap_inside_scan_multiplies():
    f = core.counted(model)

    def step(x, ctx):
        return core.scan(lambda c, _: (core.vmap(f)(c), None), x, None, length=2)[0]

    assert int(run_step(step, jnp.ones((3, 4, 1))).stats.nfe) == 2 * 3 * 4 * 3


@pytest.mark.parametrize("transform", [
    lambda f, x: jax.vmap(f)(x),
    lambda f, x: lax.cond(True, f, lambda y: y, x),
    lambda f, x: lax.scan(lambda c, _: (f(c), None), x, None, length=2)[0],
])
def test_raw_transforms_inside_a_step_refuse_to_miscount(transform):
    f = core.counted(model)
    with pytest.raises(RuntimeError, match="itscale.core.vmap"):
        run_step(lambda x, ctx: transform(f, x), jnp.ones((2, 2)))


def test_gradients_of_counted_functions_count_the_forward_call():
    f = core.counted(lambda x: jnp.sum(x ** 2), cost=lambda x: x.shape[0])
    result = run_step(lambda x, ctx: x - 0.1 * jax.grad(f)(x), jnp.ones((4, 2)))
    assert int(result.stats.nfe) == 4 * 3


def test_wrapping_twice_does_not_double_count_and_kinds_are_separate():
    f = core.counted(core.counted(model))
    reward = core.counted(lambda x: x.sum(-1), kind="verifier")

    def step(x, ctx):
        return f(x) + reward(x)[:, None], {}

    sampler = its.Sampler(lambda k, x, p: x, lambda k, s, ctx, p: step(s, ctx), lambda s: s)
    result = its.run(sampler, jax.random.key(0), jnp.ones((3, 2)), num_steps=4)
    assert int(result.stats.nfe) == 12 and int(result.stats.verifier_calls) == 12


def test_token_positions_cost_and_init_finalize_calls_are_counted():
    logits = core.counted(lambda tokens, cache: (jnp.zeros(tokens.shape + (5,)), cache), cost=core.token_positions)

    def init(key, prompts, params):
        logits(prompts, None)  # prefill: batch × prompt length positions
        return prompts

    def step(key, tokens, ctx, params):
        logits(tokens[:, -1:], None)
        return tokens, {}

    sampler = its.Sampler(init, step, lambda s: logits(s, None)[0].shape)
    result = its.run(sampler, jax.random.key(0), jnp.zeros((2, 7), jnp.int32), num_steps=4)
    assert int(result.stats.nfe) == 2 * 7 + 4 * 2 + 2 * 7


def test_counted_functions_behave_normally_outside_a_run():
    f = core.counted(model)
    np.testing.assert_array_equal(f(jnp.ones(3)), 0.5 * jnp.ones(3))
    np.testing.assert_array_equal(jax.vmap(f)(jnp.ones((2, 3))), 0.5 * jnp.ones((2, 3)))


def test_counted_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        core.counted(model, kind="flops")
    with pytest.raises(TypeError, match="callable"):
        core.counted(3)


def test_adapters_around_counted_models_count_once():
    inner = core.counted(model)
    adapter = core.counted(lambda x, t=0.0: 2.0 * inner(x, t) + 1.0)  # e.g. a prediction conversion
    result = run_step(lambda x, ctx: adapter(x), jnp.ones((4, 2)))
    assert int(result.stats.nfe) == 4 * 3
    verifier_on_model = core.counted(lambda x: inner(x).sum(-1), kind="verifier")  # other kinds still count
    result = run_step(lambda x, ctx: x + verifier_on_model(x)[:, None], jnp.ones((4, 2)))
    assert int(result.stats.nfe) == 4 * 3 and int(result.stats.verifier_calls) == 4 * 3


def test_static_cost_reads_static_counts_without_counting_them():
    model = core.counted(lambda tokens: tokens * 2, cost=core.counting.token_positions)
    tokens = jnp.zeros((3, 5), jnp.int32)
    assert core.counting.static_cost(lambda t: model(t[:, :2]) + model(t[:, 2:4]), tokens) == 3 * 4
    assert core.counting.static_cost(lambda t: t, tokens) == 0
    # A count carried out of a drop-in loop is a traced value: only a run measures it.
    looped = lambda t: core.counting.scan(lambda c, _: (model(c), None), t, length=2)[0]  # noqa: E731
    assert core.counting.static_cost(looped, tokens) is None
    with core.counting.ledger() as outer:
        core.counting.static_cost(lambda t: model(t), tokens)
    assert outer.entries["nfe"] == []
