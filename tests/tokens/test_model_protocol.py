"""The token-model protocol never decodes without context and never reads outside the vocabulary silently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import itscale as its
from itscale.models.transformer import logits_fn, split_forward


@pytest.fixture(scope="module")
def transformer():
    return its.models.Transformer(13, width=32, depth=2, num_heads=2, max_len=32, rngs=nnx.Rngs(0))


def _full_context_log_probs(model, tokens, prompt_len):
    log_probs = jax.nn.log_softmax(model(tokens)[:, prompt_len - 1:-1])
    return jnp.take_along_axis(log_probs, tokens[:, prompt_len:, None], axis=-1)[..., 0]


def test_a_transformer_rollout_finds_its_cache_and_decodes_with_context(transformer):
    prompts = jax.random.randint(jax.random.key(0), (4, 5), 0, 13)
    out = its.run(its.tokens.rollout(logits_fn(transformer)), jax.random.key(1), prompts, num_steps=8).output
    np.testing.assert_allclose(out.log_probs, _full_context_log_probs(transformer, out.tokens, 5), atol=2e-5)


def test_a_transformer_closure_without_a_cache_is_refused(transformer):
    apply, params = split_forward(transformer)
    sampler = its.tokens.rollout(lambda tokens, cache: apply(params, tokens, cache))
    with pytest.raises(TypeError, match="init_cache=model.init_cache"):
        its.run(sampler, jax.random.key(0), jnp.zeros((2, 3), jnp.int32), num_steps=2)


def test_an_ngram_bound_method_brings_its_cache():
    trigram = its.models.NGramLM(jnp.zeros((4, 4)), jax.random.normal(jax.random.key(0), (4, 4, 4)))
    prompts = jnp.array([[1, 2, 3], [0, 3, 1]])
    found = its.run(its.tokens.rollout(trigram.logits_fn), jax.random.key(2), prompts, num_steps=6).output
    given = its.run(its.tokens.rollout(trigram.logits_fn, init_cache=trigram.init_cache), jax.random.key(2),
                    prompts, num_steps=6).output
    np.testing.assert_array_equal(found.tokens, given.tokens)
    exact = trigram.sequence_log_prob(found.tokens) - trigram.sequence_log_prob(prompts)
    np.testing.assert_allclose(found.log_probs.sum(-1), exact, rtol=1e-5)


@pytest.mark.parametrize("bad", [7, -1])
def test_out_of_vocabulary_prompts_are_an_error_before_the_run(bad):
    lm = its.models.MarkovLM(jnp.zeros(5), jnp.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"prompts hold token ids outside the model's vocabulary \[0, 5\)"):
        its.run(its.tokens.rollout(lm.logits_fn), jax.random.key(0), jnp.array([[1, bad]]), num_steps=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.sequence_log_prob(jnp.array([[1, bad, 2]]))
    trigram = its.models.NGramLM(jnp.zeros((5, 5)), jnp.zeros((5, 5, 5)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trigram.sequence_log_prob(jnp.array([[1, bad, 2]]))


def test_out_of_vocabulary_ids_inside_jit_are_counted_faults_not_clipped():
    lm = its.models.MarkovLM(jnp.zeros(5), jnp.zeros((5, 5)))
    sampler = its.tokens.rollout(lm.logits_fn)
    run = jax.jit(lambda p: its.run(sampler, jax.random.key(0), p, num_steps=3))
    bad = run(jnp.array([[7, 1], [1, -1], [2, 3]]))
    assert int(bad.stats.nonfinite) > 0
    np.testing.assert_array_equal(np.isneginf(bad.output.log_probs).any(axis=1), [True, True, False])
    good = run(jnp.array([[4, 1], [1, 0], [2, 3]]))
    assert int(good.stats.nonfinite) == 0 and np.isfinite(good.output.log_probs).all()


def test_a_logits_fn_returning_only_logits_is_named():
    lm = its.models.MarkovLM(jnp.zeros(5), jnp.zeros((5, 5)))
    sampler = its.tokens.rollout(lambda tokens, cache: lm.logits_fn(tokens, cache)[0])
    with pytest.raises(TypeError, match=r"logits_fn must return a pair \(logits, cache\)"):
        its.run(sampler, jax.random.key(0), jnp.zeros((1, 1), jnp.int32), num_steps=1)


def test_python_list_prompts_are_prompts_and_a_flat_list_is_explained():
    lm = its.models.MarkovLM(jnp.zeros(5), jnp.zeros((5, 5)))
    sampler = its.tokens.rollout(lm.logits_fn)
    listed = its.run(sampler, jax.random.key(0), [[1, 2], [3, 4]], num_steps=2).output.tokens
    array = its.run(sampler, jax.random.key(0), jnp.array([[1, 2], [3, 4]]), num_steps=2).output.tokens
    np.testing.assert_array_equal(listed, array)
    with pytest.raises(ValueError, match=r"a single prompt is \[\[t0, t1, \.\.\.\]\]"):
        its.run(sampler, jax.random.key(0), [3, 1, 2], num_steps=2)
