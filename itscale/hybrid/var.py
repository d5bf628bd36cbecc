"""Next-scale prediction (VAR: Tian et al. 2024, arXiv 2404.02905): token maps drawn coarse to fine.

A sequence of token maps r_1, ..., r_K of sizes ``scales`` = (s_1 < ... < s_K) (VAR's multi-scale VQ maps,
flattened) lies coarse to fine on a canvas of L = Σ s_k positions. Step k calls the model once on the
canvas, with the maps after k masked, and draws all s_k tokens of map k in parallel:

    p_θ(r) = Π_k Π_{i in map k} p_θ(r_{k,i} | r_<k),

tokens of a map independent given the coarser maps (VAR's factorisation; exact for a model where they
are, such as :class:`itscale.models.ScaleTree`). The sequence axis scales with the number of maps.

The model is a masked denoiser (:mod:`itscale.hybrid.masked`): ``denoiser_fn(tokens, t) -> logits``
(batch, L, V) with ``mask_id`` at the positions still to draw and ``t`` = 1 − k/K, the fraction of maps
still to draw (VAR's transformer ignores it). Input ``x`` (batch, L): ``mask_id`` where to generate; a
given token (a class's coarse map, a prompt) is never changed. Run with ``num_steps = K`` (fewer leave the
finer maps masked; a step past the last map draws nothing but still calls the model). NFE: one per row
per step. Output :class:`itscale.hybrid.masked.MaskedGeneration`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.hybrid import masked
from itscale.hybrid.gumbel import categorical
from itscale.models.scale_tree import map_index, scale_layout


@takes_models
def var(denoiser_fn: Callable, *, mask_id: int, scales) -> Sampler:
    """Next-scale prediction (see the module docstring).

    Args:
      denoiser_fn: ``denoiser_fn(tokens, t) -> logits`` (:mod:`itscale.hybrid.masked`).
      mask_id: the [MASK] token id (static).
      scales: sizes of the token maps, coarse to fine, strictly increasing (static); ``x`` has
        ``sum(scales)`` positions.

    Run: ``its.run(sampler, key, x, num_steps=len(scales))``; info: ``drawn`` (batch,), the number of tokens
    drawn at the step.
    """
    model = masked.denoiser("denoiser_fn", denoiser_fn, mask_id)
    scales = scale_layout(scales)
    maps = map_index(scales)

    def validate(x, params) -> None:
        masked.check_tokens(x, params)
        if x is not None and np.shape(x)[1] != len(maps):
            raise ValueError(f"x has {np.shape(x)[1]} positions but scales={scales} lay out "
                             f"sum(scales) = {len(maps)}")

    def init(key, x, params):
        return masked.start(x, model.mask_id)

    def step(key, state, ctx, params):
        dtype = state.time.dtype
        t = jnp.full_like(state.time, 1.0 - ctx.step / len(scales))
        log_p = model(state.tokens, t)
        drawing = (maps == ctx.step)[None, :] & (state.tokens == model.mask_id)
        drawn = categorical(key, log_p)
        tokens = jnp.where(drawing & masked.possible(log_p), drawn, state.tokens)
        log_probs = jnp.where(drawing, masked.pick(log_p, drawn), state.log_probs)
        next_t = jnp.full_like(state.time, jnp.maximum(1.0 - (ctx.step + 1) / len(scales), 0.0))
        info = {"drawn": jnp.sum(drawing, axis=1, dtype=jnp.int32)}
        return masked.MaskedState(tokens, state.given, log_probs.astype(dtype), next_t), info

    return Sampler(init, step, lambda state: masked.finalize(state, model.mask_id), None, masked.watch,
                   validate=validate, nfe_per_step=1)
