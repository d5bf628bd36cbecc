"""``jacobi``: Jacobi fixed-point decoding -- all positions of a block updated in parallel.

Santilli et al. 2023 (arXiv 2305.10427), Song et al. 2021 (arXiv 2002.03629). With the noise of every
position fixed up front (``itscale.tokens.noise``), autoregressive sampling is the solution of the
triangular system ``y_j = F_j(y_{<j}) = argmax(log q(. | prompt, y_{<j}) + g_j)``. One Jacobi iteration
feeds the current guess of a block of ``b`` tokens in one model call (NFE = batch x b) and sets every
``y_j`` from the logits of the guess before it; after ``k`` iterations the first ``k + 1`` tokens are
exact, so a block reaches its fixed point -- the autoregressive tokens, bit for bit with ``rollout``
for the same key and decoding settings -- and detects it in at most ``b`` iterations. A converged
block is committed (its call's cache and last logits are kept; unconverged rows rewind their cache,
``itscale.tokens.model``) and the next block starts from its first, already exact, token. Rows move on
independently; with EOS, only the tokens up to the first EOS must agree.

One run step is one iteration. ``max_new_tokens`` (default: the run's ``num_steps``, read by ``init``
from its context ``ctx.num_steps``) fixes the output
and ``block`` (default: all of it) the block length; run ``num_steps >= max_new_tokens`` (the worst case) to always converge -- once every
row is done the remaining steps make no model call (early freeze: ``itscale.core.unless``), so NFE is
``batch x P`` (prefill) ``+ batch x b`` per iteration actually run. The output adds per-row
``iterations`` (model calls while the row was running) and ``converged``.

Bitwise equality with ``rollout`` holds when the model's logits at a position do not depend on how the
positions were batched into calls (exact models such as ``MarkovLM``; a network may differ by rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, watch_within
from itscale.tokens import sampling, sequences
from itscale.tokens.model import token_model, validate_tokens
from itscale.tokens.noise import gumbel_at
from itscale.tokens.rollout import RolloutState, new_tokens_budget, prefill, resolve_new_tokens, watch_outputs
from itscale.core.weights import takes_models


class JacobiGeneration(NamedTuple):
    """:class:`itscale.tokens.Generation` fields, then ``iterations`` (batch,) int32 and ``converged``
    (batch,) bool."""

    tokens: jax.Array
    log_probs: jax.Array
    sample_log_probs: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    finished: jax.Array
    iterations: jax.Array
    converged: jax.Array


class JacobiState(NamedTuple):
    decode: RolloutState
    guess: jax.Array        # (batch, block) current guess of the block being solved
    iterations: jax.Array   # (batch,) int32


@takes_models
def jacobi(logits_fn: Callable, *, block: int | None = None, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           eos_id: int | None = None, pad_id: int = 0, max_new_tokens: int | None = None,
           init_cache: Callable | None = None, rewind: Callable | None = None,
           max_len: int | None = None) -> Sampler:
    """Jacobi decoding sampler; see the module docstring (arguments as in :func:`itscale.tokens.rollout`).

    Args:
      block: positions solved together (static, default ``max_new_tokens``).
      rewind: ``rewind(cache, num_positions) -> cache`` for caches without a ``lengths`` field.
    """
    decoding, params = sampling.decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         eos_id=eos_id, pad_id=pad_id)
    max_new_tokens = new_tokens_budget(max_new_tokens)
    block = None if block is None else checks.positive_int("block", block)
    model = token_model("logits_fn", logits_fn, init_cache, rewind, max_len)

    def first_guess(logits, gumbel, params, width: int):
        """Guess of a block of ``width``: its exact first token (from the logits before it), then padding."""
        log_q = sampling.sampling_log_probs(logits, params, decoding)
        token = sampling.gumbel_max(log_q, gumbel, decoding.pad_id)
        padding = jnp.full((token.shape[0], width - 1), decoding.pad_id)
        return jnp.concatenate([token[:, None], padding], 1)

    def init(key, x, params, ctx=None):
        total = resolve_new_tokens(max_new_tokens, ctx)
        width = total if block is None else min(block, total)   # positions solved together (static)
        decode = prefill(model, key, x, max_new_tokens=total, extra_slots=width, decoding=decoding)
        logits = decode.next_logits
        gumbel = gumbel_at(decode.noise_keys, decode.seq.position[:, None], logits.shape[-1],
                           sampling.float_dtype(logits.dtype))[:, 0]
        guess = first_guess(logits, gumbel, params, width)
        return JacobiState(decode, guess.astype(jnp.int32), jnp.zeros_like(decode.seq.position))

    def iterate(state, params):
        width = state.guess.shape[1]
        slots = jnp.arange(width)
        decode, seq = state.decode, state.decode.seq
        done = seq.done
        logits, cache = model(state.guess, decode.cache)
        block_logits = jnp.concatenate([decode.next_logits[:, None], logits[:, :-1]], axis=1)
        log_q = sampling.sampling_log_probs(block_logits, params, decoding)
        # noise of the block's positions and of the next block's first position
        positions = seq.position[:, None] + jnp.arange(width + 1)
        gumbel = gumbel_at(decode.noise_keys, positions, log_q.shape[-1], log_q.dtype)
        new = sampling.gumbel_max(log_q, gumbel[:, :width], decoding.pad_id)
        relevant = slots < (seq.max_new_tokens - seq.position)[:, None]
        if decoding.eos_id is not None:
            eos = relevant & (new == decoding.eos_id)
            relevant = relevant & ((jnp.cumsum(eos, axis=1) - eos) == 0)
        converged = ~done & ~jnp.any(relevant & (new != state.guess), axis=1)
        log_probs = sampling.pick(sampling.model_log_probs(block_logits), new)
        seq, _ = sequences.append(seq, new, log_probs, sampling.pick(log_q, new),
                                  jnp.where(converged, width, 0), decoding)
        next_guess = first_guess(logits[:, -1], gumbel[:, width], params, width)
        guess = jnp.where(converged[:, None], next_guess, jnp.where(done[:, None], state.guess, new))
        next_logits = jnp.where(converged[:, None], logits[:, -1], decode.next_logits)
        decode = RolloutState(seq, model.rewind(cache, jnp.where(converged, 0, width)), next_logits,
                              decode.noise_keys)
        return JacobiState(decode, guess.astype(jnp.int32), state.iterations + (~done).astype(jnp.int32))

    def step(key, state, ctx, params):
        all_done = jnp.all(state.decode.seq.done)
        state = counting.unless(all_done, lambda s: iterate(s, params), state)
        return state, {"running": jnp.sum(~state.decode.seq.done)}

    def finalize(state):
        out = sequences.generation(state.decode.seq, decoding.pad_id)
        return JacobiGeneration(*out, state.iterations, state.decode.seq.done)

    return Sampler(init, step, finalize, params, watch_within(watch_outputs, "decode"),
                   validate=validate_tokens(model), nfe_per_step=block)
