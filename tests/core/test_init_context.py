"""``init`` learns the static budget through its optional fourth argument ``ctx``: a three-argument
``init`` still runs; a four-argument one receives ``StepContext(0, num_steps)`` of the run, of its
phase under ``its.chain``, and through the combinators (particles, smc, best_of_n, predictor_corrector)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.core.sampler import init_state, takes_context

X = jnp.arange(6.0).reshape(3, 2)


def recorder(*, scale: float = 1.0) -> its.Sampler:
    """A sampler whose state keeps, per row, the ``num_steps`` and ``step`` its init received."""

    def init(key, x, params, ctx):
        rows = x.shape[:1]
        return x, jnp.full(rows, ctx.num_steps, jnp.int32), jnp.broadcast_to(ctx.step, rows)

    def step(key, state, ctx, params):
        x, seen, step0 = state
        return (x * scale, seen, step0), {}

    return its.Sampler(init, step, lambda state: state[1:])


def three_argument() -> its.Sampler:
    def init(key, x, params):
        return x

    def step(key, x, ctx, params):
        return x + 1.0, {}

    return its.Sampler(init, step, lambda x: x)


def test_a_three_argument_init_still_runs():
    out = its.run(three_argument(), jax.random.key(0), X, num_steps=4).output
    np.testing.assert_array_equal(out, X + 4)
    chained = its.run(its.chain((three_argument(), 2), (three_argument(), 3)), jax.random.key(0), X,
                      num_steps=5).output
    np.testing.assert_array_equal(chained, X + 5)


@pytest.mark.parametrize("num_steps", [1, 7])
def test_a_four_argument_init_receives_the_runs_num_steps_and_step_zero(num_steps):
    seen, step0 = its.run(recorder(), jax.random.key(0), X, num_steps=num_steps).output
    np.testing.assert_array_equal(seen, num_steps)
    np.testing.assert_array_equal(step0, 0)
    assert step0.dtype == jnp.int32


def test_each_chain_phase_gets_its_own_length():
    # The first phase hands the num_steps its init saw on as the next phase's x.
    first = recorder()._replace(finalize=lambda state: jnp.broadcast_to(state[1][:, None], state[0].shape)
                                .astype(state[0].dtype))
    second = recorder()._replace(finalize=lambda state: (state[0], state[1]))
    x_of_second, seen = its.run(its.chain((first, 2), (second, 5)), jax.random.key(0), X, num_steps=7).output
    np.testing.assert_array_equal(x_of_second, 2)   # the first phase's init saw num_steps 2
    np.testing.assert_array_equal(seen, 5)          # the second phase's init saw num_steps 5


def test_particles_smc_best_of_n_and_predictor_corrector_pass_the_context_down():
    key, n = jax.random.key(1), 4
    seen, _ = its.run(its.particles(recorder(), n), key, jnp.zeros((n, 3, 2)), num_steps=3).output
    assert seen.shape == (n, 3)
    np.testing.assert_array_equal(seen, 3)
    smc = its.search.smc(recorder(), lambda out: jnp.zeros(n), num_particles=n)
    seen, _ = its.run(smc, key, jnp.zeros((n, 2)), num_steps=6).output.particles
    np.testing.assert_array_equal(seen, 6)
    best = its.search.best_of_n(recorder(), lambda out: out[0].astype(float), num_candidates=2)
    seen, _ = its.run(best, key, X, num_steps=5).output.best
    np.testing.assert_array_equal(seen, 5)
    identity = its.Sampler(lambda key, x, params: x, lambda key, state, ctx, params: (state, {}), lambda s: s)
    pc = its.predictor_corrector(recorder(), identity)
    seen, _ = its.run(pc, key, X, num_steps=2).output
    np.testing.assert_array_equal(seen, 2)


def test_init_state_passes_ctx_only_to_an_init_that_declares_it():
    ctx = its.StepContext(jnp.int32(0), 9)
    calls = []

    def plain(key, x, params):
        calls.append("plain")
        return x

    def positional(key, x, params, ctx):
        return ctx.num_steps

    def keyword(key, x, params, *, ctx=None):
        return ctx.num_steps

    def varargs(key, x, params, *rest):
        return rest[0].num_steps

    def unnamed(key, x, params, context):
        return context.num_steps

    def optional_other(key, x, params, other=None):
        return other

    for init, expected in ((plain, None), (positional, 9), (keyword, 9), (varargs, 9), (unnamed, 9),
                           (optional_other, None), (lambda *args: args[3].num_steps, 9)):
        sampler = its.Sampler(init, None, None)
        got = init_state(sampler, None, None, None, ctx)
        assert got == expected, init
        assert takes_context(init) == (expected is not None)
    assert calls == ["plain"]


def test_token_samplers_size_their_output_by_the_context():
    model = its.models.MarkovLM(np.zeros(4), np.zeros((4, 4)))
    prompts, key = jnp.zeros((2, 3), jnp.int32), jax.random.key(2)
    for num_steps in (2, 5):
        for sampler in (its.tokens.rollout(model.logits_fn), its.tokens.jacobi(model.logits_fn)):
            out = its.run(its.particles(sampler, 2), key, jnp.stack([prompts, prompts]),
                          num_steps=num_steps).output
            assert out.tokens.shape == (2, 2, 3 + num_steps)
        state = its.tokens.rollout(model.logits_fn).init(key, prompts, None,
                                                         its.StepContext(jnp.int32(0), num_steps))
        assert state.seq.tokens.shape == (2, 3 + num_steps)
    with pytest.raises(ValueError, match="max_new_tokens"):
        its.tokens.rollout(model.logits_fn).init(key, prompts, None)


def test_current_budget_is_gone():
    assert not hasattr(its.core, "current_budget") and not hasattr(its.core, "budget_scope")
    with pytest.raises(ImportError):
        import itscale.core.budget  # noqa: F401
