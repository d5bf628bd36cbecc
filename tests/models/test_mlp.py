"""The NNX time-conditioned MLP and its pure-function form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itscale.models.mlp import MLP, as_fn


def test_pure_function_matches_the_module_and_broadcasts_time():
    model = MLP(3, width=16, depth=3, time_features=4, rngs=nnx.Rngs(0))
    fn = as_fn(model)
    x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float32)
    out = jax.jit(fn)(x, 0.25)
    assert out.shape == (5, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, model(x, 0.25), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(x, jnp.full((5,), 0.25)), out, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fn(x, 0.75), out)  # the time enters
    assert len(model.layers) == 4 and model.layers[0].kernel.shape == (3 + 8, 16)


def test_same_shapes_do_not_retrace():
    fn = chex.assert_max_traces(as_fn(MLP(2, width=8, rngs=nnx.Rngs(0))), n=1)
    jitted = jax.jit(fn)
    for t in (0.1, 0.5, 0.9):
        jitted(jnp.ones((4, 2)), jnp.float32(t))


def test_bad_input_is_named():
    model = MLP(2, width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        model(jnp.ones((4, 3)), 0.5)
    with pytest.raises(ValueError, match="width"):
        MLP(2, width=0, rngs=nnx.Rngs(0))
