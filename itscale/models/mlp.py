"""A time-conditioned MLP (Flax NNX) for velocity / denoiser / score models on vector data.

    f(x, t) = W_L silu(... silu(W_1 [x, e(t)] + b_1) ...) + b_L,
    e(t) = [sin(w_k t), cos(w_k t)]_{k < F},   w_k = pi 2^k

(random-Fourier-style time features; Tancik et al. 2020, arXiv 2006.10739; silu of Elfwing et al. 2018).
``width`` hidden units in each of ``depth`` hidden layers, so ``MLP(2, width=256, depth=2)`` is the
2 -> 256 -> 256 -> 2 network of the benchmarks (plus 2F time inputs).

``as_fn(model)`` turns the module into a pure ``fn(x, t)`` (``nnx.split`` once, ``nnx.merge`` at trace
time), the model-function form every sampler takes; ``t`` is a scalar or a ``(batch,)`` vector.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from itscale.core import checks


class MLP(nnx.Module):
    """``MLP(dim, *, width=256, depth=2, time_features=8, rngs)``: (x (batch, dim), t) -> (batch, dim)."""

    def __init__(self, dim: int, *, width: int = 256, depth: int = 2, time_features: int = 8,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.dim = checks.positive_int("dim", dim)
        self.time_features = checks.positive_int("time_features", time_features)
        width = checks.positive_int("width", width)
        sizes = [dim + 2 * self.time_features] + [width] * checks.positive_int("depth", depth) + [dim]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def time_embedding(self, t, batch: int, dtype) -> jax.Array:
        """e(t) of shape (batch, 2F)."""
        t = jnp.broadcast_to(jnp.asarray(t, dtype), (batch,))
        angles = t[:, None] * (jnp.pi * 2.0 ** jnp.arange(self.time_features, dtype=dtype))
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    def __call__(self, x, t) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {x.shape}")
        h = jnp.concatenate([x, self.time_embedding(t, x.shape[0], x.dtype)], axis=-1)
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return self.layers[-1](h).astype(x.dtype)


def as_fn(model: nnx.Module) -> Callable:
    """A pure ``fn(x, t)`` of ``model`` with a snapshot of its parameters closed over."""
    graphdef, state = nnx.split(model)

    def fn(x, t):
        return nnx.merge(graphdef, state)(x, t)

    return fn
