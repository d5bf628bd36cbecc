"""blockwise: the same tokens and log-probabilities as rollout (greedy, and sampling with the same key) on
a MarkovLM with EOS and on a random Transformer, never more model calls than the autoregressive
rollout (speed-up measured on a near-deterministic chain), exact NFE, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import itscale as its
from itscale.models.transformer import logits_fn as transformer_logits_fn
from itscale.tokens.blockwise import blockwise

jax.config.update("jax_enable_x64", True)

V, N, P, BATCH, K = 5, 8, 3, 32, 3
RNG = np.random.default_rng(0)
MODEL = its.models.MarkovLM(RNG.normal(size=V), 1.5 * RNG.normal(size=(V, V)))
PROMPTS = jnp.asarray(RNG.integers(0, V, size=(BATCH, P)))
FIELDS = ("tokens", "log_probs", "sample_log_probs", "lengths", "prompt_lengths", "finished")


def assert_same_generation(parallel, sequential):
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(parallel, field)),
                                      np.asarray(getattr(sequential, field)), err_msg=field)


def check_cost(result, batch, prompt_len, k, new_tokens, eos=False):
    calls = np.asarray(result.output.target_calls)
    assert (calls <= new_tokens).all()                                  # at most the autoregressive calls
    assert eos or (calls >= -(-new_tokens // k)).all()                  # at most k tokens per call
    assert int(result.stats.nfe) == batch * prompt_len + calls.max() * batch * k
    return calls


@pytest.mark.parametrize("eos_id", [None, 4])
def test_equals_rollout_on_a_markov_chain(eos_id):
    controls = {"eos_id": eos_id, "max_new_tokens": N, "top_p": 1.0}
    for i, temperature in enumerate((0.0, 1.0)):
        params = {"temperature": temperature, "top_p": 1.0}
        key = jax.random.key(i)
        result = its.run(blockwise(MODEL.logits_fn, k=K, **controls), key, PROMPTS, num_steps=N, params=params)
        sequential = its.run(its.tokens.rollout(MODEL.logits_fn, **controls), key, PROMPTS, num_steps=N,
                             params=params).output
        assert_same_generation(result.output, sequential)
        check_cost(result, BATCH, P, K, N, eos=eos_id is not None)
        if eos_id is not None and temperature > 0:
            assert 0 < np.asarray(sequential.finished).mean() < 1


def test_k_one_is_rollout_and_large_blocks_speed_up_a_chain_with_a_fixed_greedy_token():
    # every row of the transition has its argmax at token 2: a proposal is right whatever it was
    # conditioned on, so after the first round (one exact token, padding) a round accepts k tokens
    cycle = its.models.MarkovLM(np.zeros(V), np.log(0.5 * np.eye(V)[np.full(V, 2)] + 0.1))
    n = 12
    prompts = PROMPTS[:, :1]
    reference = its.run(its.tokens.rollout(cycle.logits_fn, temperature=0.0), jax.random.key(0), prompts,
                        num_steps=n)
    calls = {}
    for k in (1, 2, 4):
        result = its.run(blockwise(cycle.logits_fn, k=k), jax.random.key(0), prompts, num_steps=n)
        assert_same_generation(result.output, reference.output)
        calls[k] = check_cost(result, BATCH, 1, k, n)
    np.testing.assert_array_equal(calls[1], n)                     # k = 1: one call per token, as rollout
    assert int(reference.stats.nfe) == BATCH * (1 + n)
    # round 1 accepts 1 token (its proposals are padding 0 != 2), then k per round: 1 + ceil((n - 1) / k) calls
    for k in (2, 4):
        np.testing.assert_array_equal(calls[k], 1 + -(-(n - 1) // k))


def test_equals_greedy_rollout_on_a_random_transformer():
    model = its.models.Transformer(11, width=32, depth=2, num_heads=2, max_len=32, rngs=nnx.Rngs(0))
    fn = transformer_logits_fn(model)
    prompts = jnp.asarray(np.random.default_rng(3).integers(0, 11, size=(4, 3)))
    n = 10
    reference = its.run(its.tokens.rollout(fn, temperature=0.0), jax.random.key(0), prompts, num_steps=n).output
    result = its.run(blockwise(fn, k=4), jax.random.key(0), prompts, num_steps=n)
    np.testing.assert_array_equal(np.asarray(result.output.tokens), np.asarray(reference.tokens))
    np.testing.assert_allclose(np.asarray(result.output.log_probs), np.asarray(reference.log_probs), atol=1e-5)
    calls = check_cost(result, 4, 3, 4, n)
    print(f"transformer: target calls {calls.tolist()} vs {n} autoregressive")


def test_errors():
    with pytest.raises(ValueError, match="k"):
        blockwise(MODEL.logits_fn, k=0)
    with pytest.raises(ValueError, match="temperature"):
        blockwise(MODEL.logits_fn, k=2, temperature=-1.0)
