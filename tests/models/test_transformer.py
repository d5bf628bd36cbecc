"""Transformer: cached decoding equals the full forward, RoPE is relative, pure functions do not
retrace, training reduces the loss (and the generic ``train`` loop on a closed-form problem)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from itscale.models.training import train
from itscale.models.transformer import KVCache, Transformer, logits_fn, next_token_loss, rope, split_forward
from itscale.verifiers import arithmetic as ar

VOCAB = 17


def small_model(**kwargs) -> Transformer:
    config = dict(width=32, depth=2, num_heads=4, mlp_ratio=2, max_len=24)
    return Transformer(VOCAB, **{**config, **kwargs}, rngs=nnx.Rngs(0))


def jitted(model: Transformer):
    """Jitted ``(full(tokens, start), step(tokens, cache))`` of the model (eager calls are slow)."""
    graphdef, params = nnx.split(model)
    full = jax.jit(lambda tokens, start: nnx.merge(graphdef, params)(tokens, start=start))
    step = jax.jit(lambda tokens, cache: nnx.merge(graphdef, params).forward(tokens, cache))
    return full, step


def ragged_batch():
    """Three sequences of 16 tokens whose first 0, 3 and 5 tokens are left padding."""
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, VOCAB)
    return tokens, jnp.array([0, 3, 5])


def assert_close_on_real_tokens(got, want, start, atol=1e-5):
    for row, s in enumerate(np.asarray(start)):
        np.testing.assert_allclose(got[row, s:], want[row, s:], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def compiled():
    """One model (rmsnorm, to cover both norms with the float64 test) and its jitted functions."""
    model = small_model(norm="rmsnorm")
    return model, jitted(model)[0], jax.jit(logits_fn(model))       # the public pure logits_fn


def test_prefill_then_decode_equals_full_forward_with_ragged_prompts(compiled):
    model, full_fn, step = compiled
    tokens, start = ragged_batch()
    full = full_fn(tokens, start)
    cache = model.init_cache(3, 24, start=start)
    logits, cache = step(tokens[:, :8], cache)                  # prefill: prompts of 8, 5 and 3 tokens
    pieces = [logits]
    for t in range(8, 16):                                      # then one token at a time
        logits, cache = step(tokens[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_array_equal(cache.lengths, [16, 16, 16])
    np.testing.assert_array_equal(cache.positions, [16, 13, 11])
    assert_close_on_real_tokens(jnp.concatenate(pieces, axis=1), full, start)


def test_left_padding_is_invisible(compiled):
    """A padded row gives the logits of the same tokens without padding."""
    _, full_fn, _ = compiled
    tokens, start = ragged_batch()
    padded = full_fn(tokens, start)
    alone = full_fn(jnp.roll(tokens, -5, axis=1), jnp.zeros(3, jnp.int32))
    np.testing.assert_allclose(padded[2, 5:], alone[2, :11], atol=1e-5)


def test_chunked_feeds_and_per_row_rewind(compiled):
    model, full_fn, step = compiled
    tokens, start = ragged_batch()
    full = full_fn(tokens, start)
    cache = model.init_cache(3, 24, start=start)
    pieces = []
    for lo, hi in [(0, 8), (8, 9), (9, 16)]:
        logits, cache = step(tokens[:, lo:hi], cache)
        pieces.append(logits)
    assert_close_on_real_tokens(jnp.concatenate(pieces, axis=1), full, start)
    # take back the last 4 positions of row 0 and 2 of row 1, then feed different lengths per row
    rewound = cache._replace(lengths=cache.lengths - jnp.array([4, 2, 0]))
    logits, _ = step(tokens[:, 12:13], rewound)                # row 0 re-feeds its slot 12
    np.testing.assert_allclose(logits[0, 0], full[0, 12], atol=1e-5)
    logits, _ = step(tokens[:, 14:15], rewound)                # row 1 re-feeds its slot 14
    np.testing.assert_allclose(logits[1, 0], full[1, 14], atol=1e-5)


def test_feed_across_the_end_of_the_cache_keeps_exact_logits(compiled):
    """A block fed across the last slot: slots past ``max_len`` are dropped, but the block's own logits
    (RoPE table of ``max_len + L`` positions, causal attention to its new keys) equal the full forward."""
    model, full_fn, step = compiled
    tokens, start = ragged_batch()
    full = full_fn(tokens, start)
    logits, cache = step(tokens[:, :8], model.init_cache(3, 12, start=start))
    logits, cache = step(tokens[:, 8:], cache)                  # slots 8..15 of a 12-slot cache
    np.testing.assert_allclose(logits, full[:, 8:], atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, [16, 16, 16])


def test_scan_decode_matches_no_cache_greedy():
    """Greedy decoding in a lax.scan with the cache writes the same tokens as full recompute."""
    model = small_model(depth=1)
    apply, params = split_forward(model)
    prompts, new = jax.random.randint(jax.random.key(2), (2, 4), 0, VOCAB), 8

    @jax.jit
    def cached(params, prompts):
        logits, cache = apply(params, prompts, model.init_cache(2, 4 + new))

        def body(carry, _):
            last, cache = carry
            token = jnp.argmax(last, -1)[:, None]
            logits, cache = apply(params, token, cache)
            return (logits[:, -1], cache), token[:, 0]

        return jax.lax.scan(body, (logits[:, -1], cache), None, length=new)[1].T

    graphdef = nnx.split(model)[0]

    @jax.jit
    def recomputed(params, prompts):
        def body(tokens, i):
            logits = nnx.merge(graphdef, params)(tokens)
            token = jnp.argmax(logits[:, 3 + i], -1)
            return tokens.at[:, 4 + i].set(token), token

        tokens = jnp.concatenate([prompts, jnp.zeros((2, new), prompts.dtype)], axis=1)
        return jax.lax.scan(body, tokens, jnp.arange(new))[1].T

    np.testing.assert_array_equal(cached(params, prompts), recomputed(params, prompts))


def test_pure_forward_does_not_retrace_for_new_values():
    model = small_model(depth=1)
    apply, params = split_forward(model)
    traces = []

    @jax.jit
    def step(params, tokens, cache):
        traces.append(1)
        return apply(params, tokens, cache)

    cache = model.init_cache(2, 24)
    for i in range(3):
        params = jax.tree.map(lambda p: p * 1.01, params)
        _, cache = step(params, jnp.full((2, 1), i, jnp.int32), cache)
    assert len(traces) == 1
    assert isinstance(cache, KVCache) and cache.keys[0].shape == (2, 4, 24, 8)


def test_rope_scores_depend_on_relative_position_only():
    with jax.enable_x64(True):
        q, k = jax.random.normal(jax.random.key(3), (2, 1, 1, 1, 16), jnp.float64)
        score = lambda m, n: jnp.sum(rope(q, jnp.array([[m]])) * rope(k, jnp.array([[n]])))  # noqa: E731
        np.testing.assert_allclose(score(7, 3), score(7 + 11, 3 + 11), rtol=1e-12)
        np.testing.assert_allclose(score(0, 5), score(40, 45), rtol=1e-12)
        assert abs(score(7, 3) - score(7, 4)) > 1e-3                          # but on the offset
        # rotation: norms are preserved and position 0 is the identity
        np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([[9]]))), jnp.linalg.norm(q), rtol=1e-12)
        np.testing.assert_allclose(rope(q, jnp.array([[0]])), q, rtol=0, atol=0)


def test_float64_model_and_cache():
    with jax.enable_x64(True):
        model = small_model(param_dtype=jnp.float64, norm="layernorm", depth=1)
        full_fn, step = jitted(model)
        tokens, start = ragged_batch()
        full = full_fn(tokens, start)
        assert full.dtype == jnp.float64
        logits, cache = step(tokens, model.init_cache(3, 16, start=start))
        assert cache.keys[0].dtype == jnp.float64
        assert_close_on_real_tokens(logits, full, start, atol=1e-12)


def test_bad_arguments_raise_before_compute():
    with pytest.raises(ValueError, match="num_heads"):
        Transformer(VOCAB, width=30, num_heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="norm"):
        Transformer(VOCAB, width=32, norm="batchnorm", rngs=nnx.Rngs(0))
    model = small_model()
    with pytest.raises(ValueError, match="start"):
        model.init_cache(3, start=jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="tokens"):
        model(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="batch"):
        model.forward(jnp.zeros((2, 1), jnp.int32), model.init_cache(3))


def test_training_on_arithmetic_reduces_loss():
    model = Transformer(ar.VOCAB_SIZE, width=32, depth=1, num_heads=2, max_len=32, rngs=nnx.Rngs(0))

    def data(key):
        problems = ar.sample_problems(key, 32, 2)
        return problems.tokens, problems.loss_mask

    def loss(model, batch, key):
        return next_token_loss(model, *batch)

    head_before = np.array(model.head.kernel[...])
    trained, losses = train(loss, model, data, optax.adam(3e-3), 120)
    assert trained is model and losses.shape == (120,)
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.5 * losses[:5].mean(), losses
    assert not np.allclose(model.head.kernel[...], head_before)                   # updated in place


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.layer = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.layer(x)


def test_train_from_arrays_and_from_an_iterator_solves_least_squares():
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    w, b = np.array([[1.0], [2.0], [-1.0]], np.float32), 0.5
    y = x @ w + b

    def loss(model, batch, key):
        return jnp.mean((model(batch[0]) - batch[1]) ** 2)

    model, losses = train(loss, Linear(nnx.Rngs(0)), (x, y), optax.adam(0.1), 300, batch_size=16)
    np.testing.assert_allclose(model.layer.kernel[...], w, atol=1e-3)
    np.testing.assert_allclose(model.layer.bias[...], [b], atol=1e-3)
    model, losses = train(loss, Linear(nnx.Rngs(0)), iter([(x, y)] * 5), optax.sgd(0.1), 5)
    assert losses.shape == (5,) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="ran out"):
        train(loss, Linear(nnx.Rngs(0)), iter([(x, y)] * 2), optax.sgd(0.1), 3)
    with pytest.raises(ValueError, match="leading"):
        train(loss, Linear(nnx.Rngs(0)), (x, y[:10]), optax.sgd(0.1), 3)
