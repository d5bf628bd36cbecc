"""Categorical draws whose floating-point precision does not bias the law: Gumbel noise from 64 bits.

A Gumbel variate is ``g = -log(E)`` with ``E = -log(u)`` standard exponential, ``u`` uniform on (0, 1).
Drawn the usual way, ``u`` on a grid of 2^-24 (float32) cuts the tails: ``E >= 2^-25`` so
``g <= -log(-log(1 - 2^-24)) ≈ 16.6``, and ``argmax(log p + g)`` under-samples every token more than
~17 nats below the best one; over a large vocabulary this lowers the effective temperature (Zheng et
al. 2024, arXiv 2409.02908; ReMDM's code draws its Gumbel noise in float64 for that reason).

Here every variate reads 64 random bits ``b`` as ``w = (b + 1/2)·2^-64`` and its complement
``1 - w = (~b + 1/2)·2^-64``, both computed with full relative precision (a float keeps small values
exactly), and takes ``E = -log1p(-w)`` when ``w < 1/2``, else ``E = -log(1 - w)``. So ``E`` is accurate to
the float's relative precision over its whole range [2^-65, 45], in float32 as in float64: ``g`` reaches
about ±45 / -3.8 instead of 16.6 / -2.8, and the draw ``argmax(log w + g)`` (Gumbel 1954; Maddison et al.
2014, arXiv 1411.0030) is the categorical law of ``softmax(log w)`` up to rounding of ``log w + g``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itscale.tokens.sampling import first_argmax


def gumbel_from_bits(high: jax.Array, low: jax.Array, dtype) -> jax.Array:
    """Standard Gumbel variates of the 64-bit words ``high·2^32 + low`` (uint32 arrays), in ``dtype``."""
    scale_high, scale_low = jnp.asarray(2.0 ** -32, dtype), jnp.asarray(2.0 ** -64, dtype)

    def fraction(hi, lo):                       # (hi·2^32 + lo + 1/2)·2^-64, exact relative precision
        return hi.astype(dtype) * scale_high + (lo.astype(dtype) + 0.5) * scale_low

    w = fraction(high, low)
    one_minus_w = fraction(~high, ~low)
    exponential = jnp.where(w < 0.5, -jnp.log1p(-w), -jnp.log(one_minus_w))
    return -jnp.log(exponential)


def gumbel_noise(key: jax.Array, shape: tuple[int, ...], dtype=None) -> jax.Array:
    """Standard Gumbel noise of ``shape`` from 64 random bits per variate (see the module docstring);
    ``dtype`` defaults to jax's default float (float64 with ``jax_enable_x64``)."""
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(float) if dtype is None else dtype)
    bits = jax.random.bits(key, tuple(shape) + (2,), jnp.uint32)
    return gumbel_from_bits(bits[..., 0], bits[..., 1], dtype)


def categorical(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """(...,) int32 draws from ``softmax(log_weights)`` over the last axis by Gumbel-max with
    :func:`gumbel_noise` in ``log_weights``' dtype (at least float32). A row without a finite weight
    returns index 0: callers test ``isfinite(max(log_weights))`` for possibility."""
    dtype = jnp.promote_types(log_weights.dtype, jnp.float32)
    log_weights = log_weights.astype(dtype)
    noisy = log_weights + gumbel_noise(key, log_weights.shape, dtype)
    return first_argmax(jnp.where(jnp.isnan(noisy), -jnp.inf, noisy))
