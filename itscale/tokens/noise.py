"""Per-position noise: the randomness of new token ``i`` of row ``b`` depends on (key, b, i) only.

``row_keys(key, batch)[b] = fold_in(key, b)``; the noise of position ``i`` (0-based among the new tokens)
in stream ``s`` is drawn from ``fold_in(fold_in(row_key, i), s)``. Fixing the noise up front this way
makes sampling with the Gumbel-max trick a deterministic function of the logits, so a parallel decoder
(Jacobi iteration, speculative drafts) that revisits position ``i`` reuses exactly the noise an
autoregressive rollout would use there, and a row's draws do not depend on the batch size.
"""

from __future__ import annotations

import jax

TOKEN, DRAFT, ACCEPT = 0, 1, 2  # noise streams: the sampled token, a draft token, an acceptance test


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """(batch,) keys, row ``b`` getting ``fold_in(key, b)``."""
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jax.numpy.arange(batch))


def _position_keys(keys: jax.Array, positions: jax.Array, stream: int) -> jax.Array:
    one = lambda key, position: jax.random.fold_in(jax.random.fold_in(key, position), stream)  # noqa: E731
    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(keys, positions)


def gumbel_at(keys: jax.Array, positions: jax.Array, vocab_size: int, dtype,
              stream: int = TOKEN) -> jax.Array:
    """(batch, k, vocab_size) standard Gumbel noise of rows ``keys`` (batch,) at ``positions`` (batch, k)."""
    draw = lambda key: jax.random.gumbel(key, (vocab_size,), dtype)  # noqa: E731
    return jax.vmap(jax.vmap(draw))(_position_keys(keys, positions, stream))


def uniform_at(keys: jax.Array, positions: jax.Array, dtype, stream: int = ACCEPT) -> jax.Array:
    """(batch, k) uniform [0, 1) noise of rows ``keys`` (batch,) at ``positions`` (batch, k)."""
    draw = lambda key: jax.random.uniform(key, (), dtype)  # noqa: E731
    return jax.vmap(jax.vmap(draw))(_position_keys(keys, positions, stream))
