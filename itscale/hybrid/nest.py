"""Both axes nested: sequence-outer / refinement-inner and refinement-outer / sequence-inner combinators.

``sequence_outer(inner_factory, denoiser_fn, *, mask_id, block, inner_steps)``: outer step ``j``
generates the canvas columns ``[j·block, (j+1)·block)`` (the last block is shifted left to end at ``L``;
columns already decided are given to it) by running a masked sampler for ``inner_steps`` steps on that
block, conditioned on everything decided before it. The inner sampler is built by
``inner_factory(block_denoiser)`` (e.g. ``lambda d: its.hybrid.mdlm(d, mask_id=M)``), where
``block_denoiser(tokens, t)`` writes the block's ``tokens`` into the canvas, calls ``denoiser_fn`` on the
whole canvas (later columns still [MASK], as in the semi-autoregressive block decoding of LLaDA, Nie et
al. 2025, arXiv 2502.09992; BD3-LMs, Arriola et al. 2025, arXiv 2503.09573, condition on the prefix
alone, the same law for a perfect denoiser, which marginalises the masked future) and returns the
block's logits. Block diffusion, AR-diffusion-style block generation and MAR's per-token refinement are
this shape; one column per block with a perfect denoiser is ancestral AR sampling.
Run with ``num_steps = ceil(L / block)``; NFE = ``batch x inner_steps`` per block.

``refinement_outer(inner, *, inner_steps)``: every outer step is a sweep that runs ``inner`` for
``inner_steps`` steps from the current value ``x`` and replaces ``x`` by the inner output, which must
have the structure, shapes and dtypes of ``x``. When a sweep leaves ``x`` unchanged (all rows), later
sweeps make no call (``itscale.core.unless``). Jacobi decoding is this over :func:`sequence_pass`
(Song et al. 2021, arXiv 2002.03629): after ``j`` sweeps the first ``j`` new tokens equal greedy AR
decoding.

Inner contract. The inner sampler is any :class:`Sampler` (its ``init`` may take the context,
``StepContext(0, inner_steps)``); it receives the outer ``params``, steps with keys
``fold_in(key, i)`` and context ``StepContext(i, inner_steps)``, inside ``itscale.core.scan`` (static
length: NFE exact). For ``sequence_outer`` it is a masked sampler (``itscale.hybrid.masked``: ``x``
(batch, block) with ``mask_id`` where to generate, given tokens unchanged, output with ``tokens`` and
``log_probs`` of shape (batch, block)); its default params are the combinator's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, StepContext, init_state, start_context
from itscale.core.weights import takes_models
from itscale.hybrid import masked
from itscale.tokens.model import token_model
from itscale.tokens.sampling import first_argmax, model_log_probs

_INIT_STREAM = 0x7FFFFFFF   # fold-in constant of an inner init key, distinct from any inner step index


class Refined(NamedTuple):
    """Output of :func:`refinement_outer`: the last ``value``, ``sweeps`` run (int32) and ``converged``."""

    value: Any
    sweeps: jax.Array
    converged: jax.Array


def run_inner(inner: Sampler, key, x, params, inner_steps: int):
    """``inner.finalize`` of ``inner_steps`` inner steps from ``x`` (counted by ``itscale.core.scan``)."""
    state = init_state(inner, jax.random.fold_in(key, _INIT_STREAM), x, params, start_context(inner_steps))

    def body(state, i):
        return inner.step(jax.random.fold_in(key, i), state, StepContext(i, inner_steps), params)[0], None

    state, _ = counting.scan(body, state, jnp.arange(inner_steps, dtype=jnp.int32))
    return inner.finalize(state)


@takes_models
def sequence_outer(inner_factory: Callable[[Callable], Sampler], denoiser_fn: Callable, *, mask_id: int,
                   block: int, inner_steps: int) -> Sampler:
    """Sequence-outer / refinement-inner sampler (see the module docstring); input and output as the
    masked samplers (:mod:`itscale.hybrid.masked`), ``x`` (batch, L) with ``mask_id`` where to generate."""
    block = checks.positive_int("block", block)
    inner_steps = checks.positive_int("inner_steps", inner_steps)
    template = inner_factory(denoiser_fn)
    if not isinstance(template, Sampler):
        raise TypeError(f"inner_factory must return an itscale.Sampler, got {type(template).__name__}")

    def init(key, x, params):
        state = masked.start(x, mask_id)
        if state.tokens.shape[1] < block:
            raise ValueError(f"block={block} is longer than the canvas (L={state.tokens.shape[1]}); use block <= L")
        return state

    def step(key, state, ctx, params):
        batch, length = state.tokens.shape
        blocks = math.ceil(length / block)
        if ctx.num_steps != blocks:
            raise ValueError(f"a canvas of L={length} in blocks of {block} takes num_steps={blocks}, "
                             f"got {ctx.num_steps}")
        start = jnp.minimum(ctx.step * block, length - block).astype(jnp.int32)

        def block_denoiser(tokens, t):
            canvas = lax.dynamic_update_slice(state.tokens, tokens.astype(jnp.int32), (jnp.int32(0), start))
            logits = denoiser_fn(canvas, t)
            return lax.dynamic_slice_in_dim(logits, start, block, axis=1)

        out = run_inner(inner_factory(block_denoiser), key,
                        lax.dynamic_slice_in_dim(state.tokens, start, block, axis=1), params, inner_steps)
        decided = lax.dynamic_slice_in_dim(state.tokens, start, block, axis=1) != mask_id
        log_probs = jnp.where(decided, lax.dynamic_slice_in_dim(state.log_probs, start, block, axis=1),
                              out.log_probs.astype(state.log_probs.dtype))
        tokens = lax.dynamic_update_slice(state.tokens, out.tokens.astype(jnp.int32), (jnp.int32(0), start))
        log_probs = lax.dynamic_update_slice(state.log_probs, log_probs, (jnp.int32(0), start))
        time = jnp.full((batch,), 1.0 - (ctx.step + 1) / ctx.num_steps, state.time.dtype)
        return masked.MaskedState(tokens, state.given, log_probs, time), {"start": start}

    return Sampler(init, step, lambda state: masked.finalize(state, mask_id), template.params, masked.watch,
                   validate=template.validate, nfe_per_step=None if template.nfe_per_step is None
                   else template.nfe_per_step * inner_steps)


def refinement_outer(inner: Sampler, *, inner_steps: int = 1) -> Sampler:
    """Refinement-outer / sequence-inner sampler (see the module docstring); output :class:`Refined`."""
    if not isinstance(inner, Sampler):
        raise TypeError(f"inner must be an itscale.Sampler, got {type(inner).__name__}")
    inner_steps = checks.positive_int("inner_steps", inner_steps)

    def init(key, x, params):
        return Refined(x, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def sweep(key, state, params):
        value = run_inner(inner, key, state.value, params, inner_steps)
        if jax.tree.structure(value) != jax.tree.structure(state.value) or any(
                (a.shape, a.dtype) != (b.shape, b.dtype) for a, b in zip(jax.tree.leaves(value),
                                                                         jax.tree.leaves(state.value))):
            raise ValueError("refinement_outer: the inner sampler's output must have the structure, shapes "
                             "and dtypes of its input x (a sweep maps x to a new x)")
        same = jnp.all(jnp.stack([jnp.all(a == b) for a, b in zip(jax.tree.leaves(value),
                                                                   jax.tree.leaves(state.value))]))
        return Refined(value, state.sweeps + 1, same)

    def step(key, state, ctx, params):
        state = counting.unless(state.converged, lambda s: sweep(key, s, params), state)
        return state, {"converged": state.converged}

    return Sampler(init, step, lambda state: state, inner.params, lambda state: state.value,
                   validate=inner.validate, weights=inner.weights,
                   nfe_per_step=None if inner.nfe_per_step is None else inner.nfe_per_step * inner_steps)


@takes_models
def sequence_pass(logits_fn: Callable, *, prompt_len: int, init_cache: Callable | None = None) -> Sampler:
    """One greedy Jacobi sweep of an AR model as a one-step sampler: ``x`` (batch, T) tokens (the first
    ``prompt_len`` fixed) maps to ``y_j = argmax p(· | x_{<j})`` for ``j >= prompt_len``, all positions in
    one teacher-forced call on a fresh cache (NFE = batch x T per step)."""
    prompt_len = checks.positive_int("prompt_len", prompt_len)
    model = token_model("logits_fn", logits_fn, init_cache)

    def step(key, tokens, ctx, params):
        batch, length = tokens.shape
        logits, _ = model(tokens, model.new_cache(batch, length, jnp.zeros((batch,), jnp.int32)))
        guess = jnp.concatenate([tokens[:, :1], first_argmax(model_log_probs(logits[:, :-1]))], axis=1)
        return jnp.where(jnp.arange(length) >= prompt_len, guess, tokens).astype(tokens.dtype), {}

    def init(key, x, params):
        return checks.int_array("x", x, ndim=2)

    return Sampler(init, step, lambda tokens: tokens, nfe_per_step=1)
