"""Models with weights reach the compiled loop as arguments: new weights never retrace, and they are used."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import itscale as its
from itscale.core.run import _run, lower
from itscale.models.transformer import split_forward

X = jax.random.normal(jax.random.key(0), (8, 2))
TRACES = {"count": 0}


def counting_apply(graphdef):
    """``apply(weights, x, t)`` of an MLP graph that counts how often it is traced."""

    def apply(weights, x, t):
        TRACES["count"] += 1
        return nnx.merge(graphdef, weights)(x, t)

    return apply


def _mlp(seed=0, width=32):
    return its.models.MLP(2, width=width, rngs=nnx.Rngs(seed))


def _train_step(model):
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.mean((m(X, 0.5) - 1.0) ** 2))(model)
    optimizer.update(model, grads)


def test_an_nnx_module_after_an_optax_step_is_not_retraced_and_its_new_weights_are_used():
    model = _mlp()
    before = its.run(its.refine.ode(model, solver="heun"), jax.random.key(1), X, num_steps=4)
    _train_step(model)
    sampler = its.refine.ode(model, solver="heun")
    traced = _run._cache_size()
    after = its.run(sampler, jax.random.key(1), X, num_steps=4)
    assert _run._cache_size() == traced                                  # no new compilation
    assert float(jnp.abs(after.output - before.output).max()) > 1e-3     # the new weights are used
    closure = its.run(its.refine.ode(its.models.as_fn(model), solver="heun"), jax.random.key(1), X, num_steps=4)
    np.testing.assert_allclose(after.output, closure.output, rtol=1e-5, atol=1e-6)


def test_bound_weights_from_a_checkpoint_sweep_trace_once():
    graphdef, _ = nnx.split(_mlp())
    apply = counting_apply(graphdef)
    TRACES["count"] = 0
    outputs = []
    for seed in range(3):                                  # three "checkpoints" of one architecture
        weights = nnx.split(_mlp(seed))[1]
        outputs.append(its.run(its.refine.ode(its.models.bind(apply, weights), solver="rk4"), jax.random.key(1),
                               X, num_steps=3).output)
    assert TRACES["count"] == 4                            # one trace of the 4 RK4 stages, for all three
    assert len({np.asarray(o).tobytes() for o in outputs}) == 3


def test_nnx_update_and_a_width_search_over_an_sde_do_not_retrace():
    model, other = _mlp(0), _mlp(1)
    reward = lambda y: -jnp.sum(y**2, axis=-1)  # noqa: E731
    path = its.paths.linear()
    first = its.run(its.search.smc(its.refine.sde(model, path), reward, num_particles=8), jax.random.key(0), X,
                    num_steps=5)
    nnx.update(model, nnx.state(other))
    traced = _run._cache_size()
    steered = its.search.smc(its.refine.sde(model, path), reward, num_particles=8)
    second = its.run(steered, jax.random.key(0), X, num_steps=5)
    assert _run._cache_size() == traced
    reference = its.run(its.search.smc(its.refine.sde(its.models.as_fn(other), path), reward, num_particles=8),
                        jax.random.key(0), X, num_steps=5)
    np.testing.assert_allclose(second.output.particles, reference.output.particles, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(first.output.particles - second.output.particles).max()) > 1e-3


def test_weights_are_arguments_not_constants_of_the_compiled_loop():
    """The lowered program of a 100x larger model is not 100x larger: its weights are parameters."""
    def program_size(width):
        return len(lower(its.refine.ode(_mlp(width=width), solver="euler"), jax.random.key(0), X,
                         num_steps=2).as_text())

    small, large = program_size(16), program_size(512)       # ~1e3 and ~3e5 parameters
    assert large < 1.5 * small, (small, large)


def test_jit_vmap_and_grad_through_run():
    model = _mlp()
    graphdef, weights = nnx.split(model)
    apply = counting_apply(graphdef)
    path = its.paths.linear()

    def sample(w, key, g_scale):
        sampler = its.refine.sde(its.models.bind(apply, w), path)
        return its.run(sampler, key, X, num_steps=4, params={"g_scale": g_scale}).output

    eager = sample(weights, jax.random.key(3), 1.0)
    np.testing.assert_allclose(jax.jit(sample)(weights, jax.random.key(3), 1.0), eager, rtol=1e-5, atol=1e-6)
    keys = jax.random.split(jax.random.key(4), 3)
    by_key = jax.vmap(sample, in_axes=(None, 0, None))(weights, keys, 1.0)
    np.testing.assert_allclose(by_key[1], sample(weights, keys[1], 1.0), rtol=1e-5, atol=1e-6)
    by_scale = jax.vmap(sample, in_axes=(None, None, 0))(weights, jax.random.key(3), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(by_scale[1], eager, rtol=1e-5, atol=1e-6)

    # Gradients with respect to a traced hyper-parameter and to the weights, against finite differences.
    loss = lambda w, g: jnp.sum(sample(w, jax.random.key(3), g) ** 2)  # noqa: E731
    d_scale = jax.grad(loss, argnums=1)(weights, 0.7)
    eps = 1e-2
    np.testing.assert_allclose(d_scale, (loss(weights, 0.7 + eps) - loss(weights, 0.7 - eps)) / (2 * eps),
                               rtol=2e-2)
    d_weights = jax.grad(loss)(weights, 0.7)
    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(5), a.shape, a.dtype), weights)
    shifted = lambda s: jax.tree.map(lambda a, d: a + s * d, weights, direction)  # noqa: E731
    along = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(d_weights), jax.tree.leaves(direction)))
    step = 1e-3
    np.testing.assert_allclose(along, (loss(shifted(step), 0.7) - loss(shifted(-step), 0.7)) / (2 * step),
                               rtol=2e-2)


def _transformer(seed=0, width=32):
    return its.models.Transformer(19, width=width, depth=2, num_heads=2, max_len=32, rngs=nnx.Rngs(seed))


def _context_log_probs(model, tokens, prompt_len):
    log_probs = jax.nn.log_softmax(model(tokens)[:, prompt_len - 1:-1])
    return jnp.take_along_axis(log_probs, tokens[:, prompt_len:, None], axis=-1)[..., 0]


PROMPTS = jax.random.randint(jax.random.key(7), (3, 4), 0, 19)


@pytest.mark.parametrize("make", [
    lambda m: its.tokens.rollout(m),
    lambda m: its.tokens.jacobi(m),
    lambda m: its.tokens.speculative(m, _transformer(1, width=16), gamma=3),
])
def test_a_transformer_module_is_a_token_model_for_every_decoder(make):
    model = _transformer()
    out = its.run(make(model), jax.random.key(2), PROMPTS, num_steps=6).output
    np.testing.assert_allclose(out.log_probs, _context_log_probs(model, out.tokens, 4), atol=3e-5)
    nnx.update(model, nnx.state(_transformer(3)))
    traced = _run._cache_size()
    again = its.run(make(model), jax.random.key(2), PROMPTS, num_steps=6).output
    assert _run._cache_size() == traced
    np.testing.assert_allclose(again.log_probs, _context_log_probs(model, again.tokens, 4), atol=3e-5)


def test_token_searches_take_modules_and_bound_models():
    model = _transformer()
    apply, weights = split_forward(model)
    bound = its.models.bind(apply, weights, init_cache=model.init_cache, vocab_size=19)
    reward = lambda g: -jnp.sum(g.tokens == 3, axis=-1).astype(jnp.float32)  # noqa: E731
    for lm in (model, bound):
        beam = its.run(its.tokens.beam_search(lm, reward, nfe_budget=4 + 4 * 2 * 2 * 2, num_steps=2, step_length=2,
                                              expansions=2),
                       jax.random.key(0), PROMPTS[:1], num_steps=2)
        assert np.isfinite(np.asarray(beam.output.best_score)).all()
        smc = its.run(its.tokens.token_smc(lm, reward, nfe_budget=4 + 8 * 3, num_steps=3, step_length=1),
                      jax.random.key(0), PROMPTS[:1], num_steps=3)
        assert np.isfinite(np.asarray(smc.output.log_normalizer)).all()


def test_a_module_as_reward_and_distinct_static_configurations():
    classifier = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    reward = its.models.bind(lambda w, y: nnx.merge(*w)(y)[:, 0], nnx.split(classifier))
    base = its.refine.ode(_mlp(), solver="euler")
    best = its.run(its.search.best_of_n(base, reward, num_candidates=4), jax.random.key(0), X, num_steps=3).output
    np.testing.assert_allclose(best.scores, classifier(best.candidates.reshape(-1, 2))[:, 0].reshape(8, 4),
                               rtol=1e-5)
    assert its.refine.ode(_mlp(), solver="heun").step is not base.step
    assert its.refine.ode(_mlp(1), solver="euler").step is base.step


def test_calling_a_weighted_sampler_outside_run_names_the_remedy():
    sampler = its.refine.ode(_mlp(), solver="euler")
    state = sampler.init(jax.random.key(0), X, None)
    with pytest.raises(RuntimeError, match="bound by its.run"):
        sampler.step(jax.random.key(0), state, its.StepContext(jnp.int32(0), 2), None)
    with its.core.binding(sampler.weights):
        new_state, _ = sampler.step(jax.random.key(0), state, its.StepContext(jnp.int32(0), 2), None)
    assert new_state.x.shape == X.shape
