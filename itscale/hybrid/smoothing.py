"""Autoregressive distribution smoothing (Meng et al. 2021, arXiv 2103.15089): refinement outer, an AR
sequence pass inner.

The data x is smoothed at levels σ_0 > σ_1 > ... > σ_{K−1} (y_k = x + σ_k ε, usually σ_{K−1} = 0); a
continuous AR model draws level 0 token by token, then each finer level token by token given the coarser
level, p(y_k[m] | y_k[<m], y_{k−1}) (Meng et al. use one smoothing level and a second AR model for the
denoising step; more levels make it an iterative denoising with an AR model as the inner loop). One
outer step is one level: ``distribution_smoothing(ar_fn, length=M)`` is
``refinement_outer(smoothing_pass(ar_fn), inner_steps=M)``, run with ``num_steps = K``.

Model: ``ar_fn(noisier, tokens, level) -> (mean, scale)``: ``noisier`` (batch, M, d) the previous level
(zeros before level 0), ``tokens`` (batch, M, d) the level being drawn, ``level`` (batch,) int32; ``mean``
(batch, M, d) and ``scale`` the per-position standard deviations (batch, M, d) or lower-triangular
factors (batch, M, d, d) of each position's Gaussian conditional, position m reading only tokens before
m (a causal network, called once per token: NFE one per row per token, M per level). Exact ground truth:
:class:`itscale.models.SmoothedSSM`.

Input ``x``: :class:`Smoothed` (``tokens`` of the sequence shape, any values; ``level`` zeros).
Output of the composition: :class:`itscale.hybrid.Refined` whose ``value`` is the :class:`Smoothed`
sequence at the finest level drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.hybrid.nest import refinement_outer


class Smoothed(NamedTuple):
    """A sequence at a smoothing level: ``tokens`` (batch, M, d), ``level`` (batch,) int32 = levels drawn."""

    tokens: jax.Array
    level: jax.Array


class _Pass(NamedTuple):
    noisier: jax.Array
    tokens: jax.Array
    level: jax.Array


def _check_input(x, params) -> None:
    if not isinstance(x, Smoothed):
        raise TypeError(f"x must be an itscale.hybrid.Smoothed(tokens, level), got {type(x).__name__}")
    tokens = jnp.asarray(x.tokens)
    if tokens.ndim != 3 or not jnp.issubdtype(tokens.dtype, jnp.floating):
        raise ValueError(f"x.tokens must be a floating (batch, M, d) array, got {tokens.dtype}{tokens.shape}")
    if jnp.shape(x.level) != tokens.shape[:1]:
        raise ValueError(f"x.level must have shape (batch,) = {tokens.shape[:1]}, got {jnp.shape(x.level)}")


@takes_models
def smoothing_pass(ar_fn: Callable) -> Sampler:
    """One level drawn token by token (the inner sampler; see the module docstring): run for M steps on
    a :class:`Smoothed` sequence, output the next level's :class:`Smoothed` sequence."""
    checks.function("ar_fn", ar_fn, "(noisier, tokens, level) -> (mean, scale)")
    model = counting.counted(ar_fn)

    def init(key, x, params):
        level = jnp.asarray(x.level, jnp.int32)
        noisier = jnp.where((level > 0)[:, None, None], x.tokens, jnp.zeros_like(x.tokens))
        return _Pass(noisier, jnp.zeros_like(x.tokens), level)

    def step(key, state, ctx, params):
        mean, scale = model(state.noisier, state.tokens, state.level)
        if jnp.shape(mean) != state.tokens.shape or jnp.ndim(scale) not in (3, 4):
            raise ValueError(f"ar_fn must return mean {state.tokens.shape} and scale (batch, M, d) or "
                             f"(batch, M, d, d), got {jnp.shape(mean)} and {jnp.shape(scale)}")
        m = ctx.step
        noise = jax.random.normal(key, mean.shape[:1] + mean.shape[2:], state.tokens.dtype)
        factor = scale[:, m]
        shift = factor * noise if factor.ndim == 2 else jnp.einsum("bij,bj->bi", factor, noise)
        tokens = state.tokens.at[:, m].set((mean[:, m] + shift).astype(state.tokens.dtype))
        return state._replace(tokens=tokens), {}

    return Sampler(init, step, lambda state: Smoothed(state.tokens, state.level + 1), None,
                   watch=lambda state: state.tokens, validate=_check_input, nfe_per_step=1)


def distribution_smoothing(ar_fn: Callable, *, length: int) -> Sampler:
    """AR distribution smoothing over sequences of ``length`` tokens: ``refinement_outer(smoothing_pass(ar_fn),
    inner_steps=length)``; run ``its.run(sampler, key, Smoothed(zeros, zeros(batch, int32)), num_steps=K)``
    for K levels (see the module docstring)."""
    return refinement_outer(smoothing_pass(ar_fn), inner_steps=checks.positive_int("length", length))
