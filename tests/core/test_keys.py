"""``as_key``: a raw uint32[2] key becomes a typed key with the same bits, so every key a sampler sees
is typed (resampling tells random streams from data by dtype) and results do not change."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.core.keys import as_key


def _is_typed(key) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_a_raw_key_is_wrapped_with_the_same_bits_and_a_typed_key_passes_through():
    raw = jax.random.PRNGKey(7)
    key = as_key("key", raw)
    assert _is_typed(key) and key.shape == ()
    np.testing.assert_array_equal(jax.random.key_data(key), raw)
    typed = jax.random.key(7)
    assert as_key("key", typed) is typed
    wrapped = jax.vmap(lambda k: jax.random.key_data(as_key("key", k)))(jax.random.split(raw, 3))
    np.testing.assert_array_equal(wrapped, jax.random.split(raw, 3))
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        as_key("key", jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="single PRNG key"):
        as_key("key", jax.random.split(typed, 2))


def test_samplers_see_typed_keys():
    seen = []

    def init(key, x, params):
        seen.append(_is_typed(key))
        return x

    def step(key, x, ctx, params):
        seen.append(_is_typed(key))
        return x + jax.random.normal(key, x.shape), {}

    its.run(its.Sampler(init, step, lambda x: x, None), jax.random.PRNGKey(0), jnp.zeros((2, 2)), num_steps=2)
    assert seen and all(seen)


def test_raw_keys_give_the_same_bits_as_typed_ones():
    gmm = its.models.GaussianMixture(weights=jnp.array([0.3, 0.7]),
                                     means=jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                                     covs=jnp.stack([0.3 * jnp.eye(2), 0.5 * jnp.eye(2)]))
    path = its.paths.linear()
    lm = its.models.MarkovLM(jnp.zeros(5), jax.random.normal(jax.random.key(0), (5, 5)))
    noise, prompts = jax.random.normal(jax.random.key(1), (4, 2)), jnp.zeros((4, 1), jnp.int32)
    samplers = {"ode": (its.refine.ode(gmm.velocity(path), solver="heun"), noise),
                "sde": (its.refine.sde(gmm.velocity(path), path), noise),
                "rollout": (its.tokens.rollout(lm.logits_fn), prompts),
                "rollout step noise": (its.tokens.rollout(lm.logits_fn, noise="step"), prompts)}
    for name, (sampler, x) in samplers.items():
        raw = its.run(sampler, jax.random.PRNGKey(3), x, num_steps=4).output
        typed = its.run(sampler, jax.random.key(3), x, num_steps=4).output
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=name), raw, typed)


@pytest.mark.parametrize("trace", [None, 2])
def test_the_key_table_gives_each_step_the_key_of_fold_in(monkeypatch, trace):
    """Step i gets fold_in(loop key, i) whether the keys come from the table derived before the loop or
    are derived inside each step (runs longer than KEY_TABLE_STEPS), with and without recording."""
    run_module = importlib.import_module("itscale.core.run")
    loop_key = jax.random.split(jax.random.key(3))[1]
    seen = its.Sampler(lambda key, x, params: x, lambda key, x, ctx, params: (
        x.at[:, ctx.step].set(jax.random.key_data(key)), {}), lambda x: x, None)
    x = jnp.zeros((1, 5, 2), jnp.uint32)
    tabled = its.run(seen, jax.random.key(3), x, num_steps=5, trace=trace).output
    monkeypatch.setattr(run_module, "KEY_TABLE_STEPS", 0)
    derived = its.run(seen, jax.random.key(3), x, num_steps=5, trace=trace).output
    expected = jnp.stack([jax.random.key_data(jax.random.fold_in(loop_key, i)) for i in range(5)])
    np.testing.assert_array_equal(tabled[0], expected)
    np.testing.assert_array_equal(derived[0], expected)
