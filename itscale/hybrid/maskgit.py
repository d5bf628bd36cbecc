"""MaskGIT confidence decoding (Chang et al. 2022, arXiv 2202.04200).

Step i of K (r = (i + 1)/K): one denoiser call gives p_θ(x₀ | z) at every position; a token x̂ is drawn
at each masked position, and its confidence is

    c = log p_θ(x̂) + τ·(1 − r)·g,   g standard Gumbel (known tokens: c = +∞),

with τ the traced ``params["temperature"]`` (MaskGIT's choice temperature, annealed to 0). Of a row's
N initially masked positions, the n = ⌈cos(π r / 2)·N⌉ least confident are (re-)masked, clipped to
1 <= n <= (masked now) − 1 as in the reference implementation, so every step decides at least one
token; the last step decides all. With K = N steps exactly one token is decided per step.
Positions given in ``x`` are known from the start. NFE: one denoiser call per row per step.

τ → ∞ makes the order uniformly random (independent of the drawn tokens): with a perfect denoiser and
K = N it samples the data law exactly. Small τ prefers confident tokens, which biases the law
towards its modes (the point of confidence decoding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.hybrid import masked
from itscale.hybrid.gumbel import gumbel_noise
from itscale.tokens.sampling import first_argmax


def masked_after(step: jax.Array, num_steps: int, num_to_decode: jax.Array, num_masked: jax.Array,
                 dtype=jnp.float32) -> jax.Array:
    """(batch,) positions left masked after step ``step``: ⌈cos(π r/2)·N⌉ clipped to [1, masked − 1],
    0 at the last step (r computed in ``dtype``)."""
    r = (step + 1).astype(dtype) / num_steps
    target = jnp.ceil(jnp.cos(0.5 * math.pi * r) * num_to_decode).astype(jnp.int32)
    clipped = jnp.maximum(1, jnp.minimum(num_masked - 1, target))
    return jnp.where(step == num_steps - 1, 0, clipped)


def least_confident(confidence: jax.Array, count: jax.Array) -> jax.Array:
    """(batch, L) bool: the ``count[b]`` smallest entries of each row (ties to the lower index)."""
    ranks = jnp.argsort(jnp.argsort(confidence, axis=1, stable=True), axis=1, stable=True)
    return ranks < count[:, None]


@takes_models
def maskgit(denoiser_fn: Callable, *, mask_id: int, temperature: float = 4.5) -> Sampler:
    """MaskGIT decoder (see the module docstring).

    Args:
      denoiser_fn: ``denoiser_fn(tokens, t) -> logits`` (:mod:`itscale.hybrid.masked`), called with the
        grid time t = 1 − i/K.
      mask_id: the [MASK] token id (static).
      temperature: default of the traced ``params["temperature"]`` (τ >= 0).

    Output :class:`itscale.hybrid.masked.MaskedGeneration`; info: ``decided`` tokens per row.
    """
    model = masked.denoiser("denoiser_fn", denoiser_fn, mask_id)
    params = {"temperature": checks.in_range("temperature", temperature, 0.0, math.inf)}

    def init(key, x, params):
        return masked.start(x, model.mask_id)

    def step(key, state, ctx, params):
        dtype = state.time.dtype
        batch, length = state.tokens.shape
        t = 1.0 - ctx.step.astype(dtype) / ctx.num_steps
        log_p = model(state.tokens, jnp.full((batch,), t, dtype))
        vocab = log_p.shape[-1]
        # One block of Gumbel noise: V columns per position for its token, one for its confidence.
        noise = gumbel_noise(key, (batch, length, vocab + 1), log_p.dtype)
        drawn = first_argmax(log_p + noise[..., :vocab])
        is_masked = state.tokens == model.mask_id
        ok = masked.possible(log_p)
        ratio = (ctx.step + 1).astype(dtype) / ctx.num_steps
        scale = jnp.asarray(params["temperature"], dtype) * (1.0 - ratio)
        confidence = jnp.where(is_masked & ok, masked.pick(log_p, drawn) + scale * noise[..., vocab], jnp.inf)
        count = masked_after(ctx.step, ctx.num_steps, jnp.sum(~state.given, axis=1),
                             jnp.sum(is_masked, axis=1), dtype)
        decide = is_masked & ok & ~least_confident(confidence, count)
        tokens = jnp.where(decide, drawn, state.tokens)
        log_probs = jnp.where(decide, masked.pick(log_p, drawn),
                              jnp.where(is_masked & ~ok, -jnp.inf, state.log_probs))
        new_state = masked.MaskedState(tokens, state.given, log_probs.astype(dtype),
                                       jnp.full((batch,), 1.0 - ratio, dtype))
        return new_state, {"decided": jnp.sum(decide, axis=1, dtype=jnp.int32)}

    return Sampler(init, step, lambda state: masked.finalize(state, model.mask_id), params, masked.watch,
                   validate=masked.validator(temperature=(0.0, math.inf)), nfe_per_step=1)
