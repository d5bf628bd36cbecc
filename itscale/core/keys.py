"""Key discipline: ``fold_in(key, step)`` for a step, then split per particle.

The result of a run depends only on the key, the budget and the inputs: never on how many devices
hold the particles, since every particle's key is derived from its index.
"""

from __future__ import annotations

import jax


def step_key(key: jax.Array, step) -> jax.Array:
    """Key of step ``step`` (traced int) of a loop driven by ``key``."""
    return jax.random.fold_in(key, step)


def split_per_particle(key: jax.Array, num_particles: int) -> jax.Array:
    """``num_particles`` independent keys, particle ``i`` always getting the same one.

    A single particle keeps the stream's own key, so ``particles(s, 1)`` draws what ``s`` draws.
    """
    if num_particles == 1:
        return key[None]
    return jax.random.split(key, num_particles)


def as_key(name: str, key) -> jax.Array:
    """A typed key from a typed key (``jax.random.key``) or a raw uint32[2] key (``jax.random.PRNGKey``,
    wrapped with the same bits); reject anything else. Keys derived from it are typed too, so a sampler
    state can tell its random streams from its data by dtype (``itscale.search.in_place``)."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    if isinstance(key, jax.Array) and key.dtype == jax.numpy.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed) (or jax.random.PRNGKey), "
                    f"got {type(key).__name__} {getattr(key, 'dtype', '')} {getattr(key, 'shape', '')}")
