"""``blockwise``: blockwise parallel decoding -- predict k tokens, verify them in one call, accept a prefix.

Stern et al. 2018 (arXiv 1811.03115). Each round of the paper has three substeps: *predict* k tokens
ŷ_{j+1..j+k} with proposal models p_1 .. p_k (p_1 the base model), *verify* them with the base model in
one parallel call, and *accept* the longest prefix ŷ_{j+1..j+k̂} on which they agree with the base
model's own choice ``argmax p_1(· | ŷ_{<=j+i-1})``. With their "combined scoring and proposal" the
verify call of one round also yields the proposals of the next, so a round costs one model call.

Our models have one head, so the proposals are the model's own guesses from the previous call (the
Jacobi guesses of ``itscale.tokens.jacobi``): a round feeds the block ``g`` of ``k`` tokens, where
``g_0`` is exact (the base model's token after the accepted prefix) and ``g_1 .. g_{k-1}`` are
proposals. One call gives ``y_i = F(prefix, g_{<i})`` at the ``k + 1`` positions of the block and the
one after it; ``n`` = the length of the agreeing prefix ``g_i = y_i`` (``n >= 1``, as ``g_0 = y_0``)
is accepted and written, the cache is rewound by ``k - n`` and the next block is
``y_n, y_{n+1}, .., y_k`` (``y_n`` is the verifier's own next token, exact; the rest are the new
proposals), filled up to ``k`` with copies of ``y_k`` (a guess that a token repeats; the first block is
the exact token and ``pad_id``). A proposal ``y_{i+1}`` was computed after ``g_i``, so it is right
when ``g_i`` was, or when the model's choice does not depend on the rejected token: the speed-up is the
model's, not guaranteed (on a first-order chain whose greedy token depends on the previous one it is
about 1). A round advances ``n ∈ [1, k]`` tokens, so ``max_new_tokens`` rounds always
finish and the model is called at most as often as by ``rollout``.

Tokens are ``F_i = argmax(log q_i + g_i)`` with the per-position noise of ``itscale.tokens.noise``:
temperature 0 (the default, the paper's greedy decoding) is the greedy chain; a positive temperature
samples with noise fixed up front, and the output equals ``rollout``'s for the same key bit for bit in
both cases (for models whose logits at a position do not depend on how positions were batched).

One run step is one round; rows move on independently and a round with no running row makes no call
(``itscale.core.unless``), so ``stats.nfe = batch x P + rounds x batch x k`` with ``rounds =
max(target_calls)``. The output adds per-row ``target_calls`` (rounds while the row ran) and
``tokens_per_call``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, watch_within
from itscale.core.weights import takes_models
from itscale.tokens import sampling, sequences
from itscale.tokens.model import token_model, validate_tokens
from itscale.tokens.noise import gumbel_at
from itscale.tokens.rollout import RolloutState, new_tokens_budget, prefill, resolve_new_tokens, watch_outputs


class BlockwiseGeneration(NamedTuple):
    """:class:`itscale.tokens.Generation` fields, then ``target_calls`` (batch,) int32."""

    tokens: jax.Array
    log_probs: jax.Array
    sample_log_probs: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    finished: jax.Array
    target_calls: jax.Array

    @property
    def tokens_per_call(self) -> jax.Array:
        """New tokens per model call (after the prefill), over the batch."""
        return jnp.sum(self.lengths - self.prompt_lengths) / jnp.maximum(jnp.sum(self.target_calls), 1)


class BlockwiseState(NamedTuple):
    decode: RolloutState
    block: jax.Array         # (batch, k): exact first token, then k - 1 proposals
    target_calls: jax.Array  # (batch,) int32


def agreeing_prefix(block: jax.Array, chosen: jax.Array) -> jax.Array:
    """(batch,) length of the longest prefix on which ``block`` and ``chosen`` (batch, k) agree."""
    return jnp.sum(jnp.cumprod(block == chosen, axis=1), axis=1, dtype=jnp.int32)


def next_block(chosen: jax.Array, accepted: jax.Array, k: int) -> jax.Array:
    """``chosen[:, n], .., chosen[:, k]`` (the ``k + 1`` tokens of a call) shifted to the front, filled up
    to ``k`` with copies of ``chosen[:, k]``."""
    index = jnp.minimum(accepted[:, None] + jnp.arange(k), k)
    return jnp.take_along_axis(chosen, index, axis=1).astype(jnp.int32)


@takes_models
def blockwise(logits_fn: Callable, *, k: int, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None, min_p: float | None = None, eos_id: int | None = None,
              pad_id: int = 0, max_new_tokens: int | None = None, init_cache: Callable | None = None,
              rewind: Callable | None = None, max_len: int | None = None) -> Sampler:
    """Blockwise parallel decoding sampler; see the module docstring (other arguments as in
    :func:`itscale.tokens.rollout`; ``temperature`` defaults to 0, greedy).

    Args:
      k: tokens fed per round, the most accepted per model call (static, >= 1; k = 1 is ``rollout``).
      rewind: ``rewind(cache, num_positions) -> cache`` for caches without a ``lengths`` field.
    """
    decoding, params = sampling.decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         eos_id=eos_id, pad_id=pad_id)
    k = checks.positive_int("k", k)
    max_new_budget = new_tokens_budget(max_new_tokens)
    model = token_model("logits_fn", logits_fn, init_cache, rewind, max_len)

    def choose(logits, seq, noise_keys, params):
        """Tokens and sampling log-laws at the ``width`` positions after the decided ones."""
        log_q = sampling.sampling_log_probs(logits, params, decoding)
        positions = seq.position[:, None] + jnp.arange(logits.shape[1])
        gumbel = gumbel_at(noise_keys, positions, log_q.shape[-1], log_q.dtype)
        return sampling.gumbel_max(log_q, gumbel, decoding.pad_id), log_q

    def init(key, x, params, ctx=None):
        decode = prefill(model, key, x, max_new_tokens=resolve_new_tokens(max_new_budget, ctx),
                         extra_slots=k, decoding=decoding)
        first, _ = choose(decode.next_logits[:, None], decode.seq, decode.noise_keys, params)
        block = jnp.concatenate([first, jnp.full((first.shape[0], k - 1), decoding.pad_id, jnp.int32)], axis=1)
        return BlockwiseState(decode, block, jnp.zeros_like(decode.seq.position))

    def round_(state, params):
        decode, seq = state.decode, state.decode.seq
        running = ~seq.done
        logits, cache = model(state.block, decode.cache)                                   # verify
        all_logits = jnp.concatenate([decode.next_logits[:, None], logits], axis=1)       # (B, k + 1, V)
        chosen, log_q = choose(all_logits, seq, decode.noise_keys, params)
        accepted = jnp.where(running, agreeing_prefix(state.block, chosen[:, :k]), 0)     # accept
        seq, _ = sequences.append(seq, chosen[:, :k], sampling.pick(sampling.model_log_probs(all_logits[:, :k]),
                                                                    chosen[:, :k]),
                                  sampling.pick(log_q[:, :k], chosen[:, :k]), accepted, decoding)
        next_logits = jnp.take_along_axis(all_logits, accepted[:, None, None], axis=1)[:, 0]
        block = jnp.where(running[:, None], next_block(chosen, accepted, k), state.block)
        decode = RolloutState(seq, model.rewind(cache, k - accepted), next_logits, decode.noise_keys)
        return BlockwiseState(decode, block, state.target_calls + running.astype(jnp.int32))

    def step(key, state, ctx, params):
        state = counting.unless(jnp.all(state.decode.seq.done), lambda s: round_(s, params), state)
        return state, {"running": jnp.sum(~state.decode.seq.done)}

    def finalize(state):
        return BlockwiseGeneration(*sequences.generation(state.decode.seq, decoding.pad_id), state.target_calls)

    return Sampler(init, step, finalize, params, watch_within(watch_outputs, "decode"),
                   validate=validate_tokens(model), nfe_per_step=k)
