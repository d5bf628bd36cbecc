"""MaskedTransformer: full (non-causal) attention, time-free, shape errors; the MDLM loss weights masked
positions only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import itscale as its


def _model():
    return its.models.MaskedTransformer(3, 5, width=16, depth=1, num_heads=2, rngs=nnx.Rngs(0))


def test_every_position_sees_every_other_and_time_is_ignored():
    model = _model()
    tokens = jnp.array([[0, 1, 3, 2, 3]])                  # mask_id = 3
    later = tokens.at[0, 4].set(1)
    logits, changed = model(tokens), model(later)
    assert logits.shape == (1, 5, 3)
    assert not np.allclose(logits[0, 0], changed[0, 0])    # position 0 reads position 4 (bidirectional)
    np.testing.assert_array_equal(model(tokens, jnp.array([0.3])), logits)
    assert model.mask_id == 3


def test_loss_ignores_unmasked_positions_and_bad_shapes_are_named():
    model = _model()
    tokens = jnp.zeros((64, 5), jnp.int32)
    loss = its.models.masked_denoising_loss(model, tokens, jax.random.key(0))
    assert np.isfinite(float(loss)) and float(loss) > 0
    graphdef, params = nnx.split(model)
    head = jax.tree.map(jnp.zeros_like, params)            # a model with all-zero weights: uniform logits
    flat = nnx.merge(graphdef, head)
    value = its.models.masked_denoising_loss(flat, tokens, jax.random.key(0))
    key_t, key_mask = jax.random.split(jax.random.key(0))  # the loss's own draws, recomputed
    t = jnp.maximum((jax.random.uniform(key_t) + jnp.arange(64) / 64) % 1.0, 1e-3)
    masked = jax.random.uniform(key_mask, (64, 5)) < t[:, None]
    expected = jnp.mean(jnp.sum(masked, axis=1) * jnp.log(3.0) / t) / 5
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="tokens must have shape"):
        model(jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="num_heads"):
        its.models.MaskedTransformer(3, 5, width=10, num_heads=4, rngs=nnx.Rngs(0))


def test_given_positions_are_never_masked_and_the_loss_averages_over_the_others():
    """Conditional MDLM: with ``given`` (a prompt) those positions stay in the input and out of the loss,
    which is the closed form of uniform logits over the free positions only."""
    model = _model()
    graphdef, params = nnx.split(model)
    flat = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, params))
    seen = []

    class Recording(nnx.Module):
        mask_id = 3

        def __call__(self, tokens, t=None):
            seen.append(tokens)
            return flat(tokens, t)

    tokens = jnp.ones((64, 5), jnp.int32)
    given = jnp.array([True, True, False, False, False])
    value = its.models.masked_denoising_loss(Recording(), tokens, jax.random.key(0), given=given)
    assert bool(jnp.all(seen[0][:, :2] == 1)) and bool(jnp.any(seen[0][:, 2:] == 3))
    key_t, key_mask = jax.random.split(jax.random.key(0))
    t = jnp.maximum((jax.random.uniform(key_t) + jnp.arange(64) / 64) % 1.0, 1e-3)
    masked = (jax.random.uniform(key_mask, (64, 5)) < t[:, None]) & ~given
    expected = jnp.mean(jnp.sum(masked, axis=1) * jnp.log(3.0) / 3 / t)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
