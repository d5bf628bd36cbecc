"""Per-position noise: the randomness of new token ``i`` of row ``b`` depends on (key, b, i) only.

``row_keys(key, batch)[b] = fold_in(key, b)``. The noise of position ``i`` (0-based among the new
tokens) in stream ``s`` at vocabulary index ``v`` is a counter-based draw: the Threefry-2x32 block
(20 rounds; Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11) of the row key's
two 32-bit words on the counter ``(i, 3 v + s)``, turned into a uniform on (0, 1) and then a Gumbel
variate. Fixing the noise up front this way makes sampling with the Gumbel-max trick a deterministic
function of the logits, so a parallel decoder (Jacobi iteration, speculative drafts) that revisits
position ``i`` reuses exactly the noise an autoregressive rollout would use there, and a row's draws
do not depend on the batch size.

The block cipher is written out round by round (:func:`threefry2x32`, equal to
``jax.extend.random.threefry_2x32``), so XLA fuses a whole draw into one elementwise kernel; drawn
through ``jax.random`` (two ``fold_in`` then ``gumbel``), each step would make three Threefry calls,
each lowered on CPU to a rolled while loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOKEN, DRAFT, ACCEPT = 0, 1, 2  # noise streams: the sampled token, a draft token, an acceptance test
NUM_STREAMS = 3
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """(batch,) keys, row ``b`` getting ``fold_in(key, b)``."""
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jax.numpy.arange(batch))


def threefry2x32(key_words: tuple[jax.Array, jax.Array], counter: tuple[jax.Array, jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-20 of uint32 ``counter`` words under ``key_words`` (all broadcast together).

    Five groups of four rounds ``x0 += x1; x1 = rotl(x1, r) ^ x0``, a key injection after each group,
    from the key schedule ``(k0, k1, k0 ^ k1 ^ 0x1BD11BDA)``.
    """
    k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key_words)
    schedule = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    x0 = jnp.asarray(counter[0], jnp.uint32) + schedule[0]
    x1 = jnp.asarray(counter[1], jnp.uint32) + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _key_words(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words per key (a Threefry key's data; wider key data is folded through the cipher)."""
    data = jax.random.key_data(keys)
    data = data.reshape(data.shape[:keys.ndim] + (-1,))
    words = (data[..., 0], data[..., 1])
    for i in range(2, data.shape[-1] - 1, 2):
        words = threefry2x32(words, (data[..., i], data[..., i + 1]))
    return words


def _uniform(keys: jax.Array, positions: jax.Array, index: jax.Array, stream: int, dtype) -> jax.Array:
    """Uniform (0, 1) draws of rows ``keys`` (batch,) at ``positions`` (batch, k) and ``index`` (n,)
    -> (batch, k, n): 24 random bits, 53 for float64, centred in their cell (so never 0 or 1)."""
    k0, k1 = _key_words(keys)
    words = (k0[:, None, None], k1[:, None, None])
    counter1 = jnp.asarray(index, jnp.uint32) * np.uint32(NUM_STREAMS) + np.uint32(stream)
    y0, y1 = threefry2x32(words, (jnp.asarray(positions)[..., None], counter1))
    if jnp.dtype(dtype) == jnp.float64:
        bits = (y0.astype(jnp.uint64) << np.uint64(21)) | (y1 >> np.uint32(11)).astype(jnp.uint64)
        return (bits.astype(jnp.float64) + 0.5) * 2.0 ** -53
    return ((y0 >> np.uint32(8)).astype(jnp.float32) + 0.5) * np.float32(2.0 ** -24)


def gumbel_at(keys: jax.Array, positions: jax.Array, vocab_size: int, dtype,
              stream: int = TOKEN) -> jax.Array:
    """(batch, k, vocab_size) standard Gumbel noise of rows ``keys`` (batch,) at ``positions`` (batch, k)."""
    u = _uniform(keys, positions, jnp.arange(vocab_size), stream, dtype)
    return (-jnp.log(-jnp.log(u))).astype(dtype)


def uniform_at(keys: jax.Array, positions: jax.Array, dtype, stream: int = ACCEPT) -> jax.Array:
    """(batch, k) uniform (0, 1) noise of rows ``keys`` (batch,) at ``positions`` (batch, k)."""
    return _uniform(keys, positions, np.zeros(1, np.uint32), stream, dtype)[..., 0].astype(dtype)
