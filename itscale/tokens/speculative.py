"""``speculative``: speculative sampling -- a cheap draft proposes, the target verifies in one call.

Leviathan et al. 2023 (arXiv 2211.17192), Chen et al. 2023 (arXiv 2302.01318). One run step is one
round per row: the draft samples ``gamma`` tokens ``d_j ~ q_j`` autoregressively; one target call on
the ``gamma + 1`` positions ``[last token, d_1 .. d_gamma]`` gives ``p_1 .. p_{gamma+1}``; ``d_j`` is
accepted with probability ``min(1, p_j(d_j) / q_j(d_j))`` until the first rejection, where a token is
drawn from ``norm(max(0, p_j - q_j))`` instead (after ``gamma`` acceptances, a bonus token from
``p_{gamma+1}``). Each round adds ``k + 1`` tokens (k accepted) and the output is distributed exactly as
target sampling. With i.i.d. acceptances of rate ``a`` the expected tokens per target call is
``(1 - a^(gamma+1)) / (1 - a)``.

``p`` and ``q`` are the sampling laws of target and draft under the same decoding controls
(temperature, top-k/p, min-p: ``itscale.tokens.sampling``), so the output follows the target's
sampling law and ``log_probs`` are the target model's. The noise of draft, acceptance test and
correction at new position ``i`` is fixed per (row, i) (``itscale.tokens.noise``); reusing it for a
position re-drafted after a rejection is sound, since nothing kept depended on it.

State: both caches hold every decided token but the last one, which opens the next round; init
prefills ``P - 1`` prompt tokens in each model (NFE ``2 x batch x (P - 1)``), a round feeds
``gamma + 1`` positions to each model (the draft: ``gamma + 1`` calls of one position, the target: one
call) and rewinds both by the ``gamma - k`` rejected positions. Rows move on independently; a round with
no running row makes no call (``itscale.core.unless``), so ``stats.nfe = 2 x batch x (P - 1) +
rounds x 2 x batch x (gamma + 1)`` with ``rounds = max(target_calls)``. Draft and target evaluations are
both counted as ``"nfe"``; the output reports each row's ``target_calls`` (rounds while it ran),
``accepted`` drafts and ``tests`` (acceptance tests made), hence ``acceptance_rate`` and
``tokens_per_call`` (``k + 1`` per round, before the cut at ``max_new_tokens``).

``num_steps`` counts rounds: ``num_steps = max_new_tokens`` always suffices (a round adds >= 1 token),
which is the default (``max_new_tokens=None``: the run's ``num_steps``, read by ``init`` from its
context ``ctx.num_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.tokens import noise, sampling, sequences
from itscale.tokens.model import TokenModel, token_model, validate_tokens
from itscale.tokens.rollout import new_tokens_budget, resolve_new_tokens
from itscale.tokens.sequences import Sequences
from itscale.core.weights import takes_models


class SpeculativeGeneration(NamedTuple):
    """:class:`itscale.tokens.Generation` fields, then per-row round statistics (batch,) int32."""

    tokens: jax.Array
    log_probs: jax.Array
    sample_log_probs: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    finished: jax.Array
    target_calls: jax.Array
    accepted: jax.Array
    tests: jax.Array

    @property
    def acceptance_rate(self) -> jax.Array:
        """Accepted drafts / acceptance tests, over the batch."""
        return jnp.sum(self.accepted) / jnp.maximum(jnp.sum(self.tests), 1)

    @property
    def tokens_per_call(self) -> jax.Array:
        """Tokens produced per target call (k + 1 per round), over the batch."""
        calls = jnp.sum(self.target_calls)
        return (jnp.sum(self.accepted) + calls) / jnp.maximum(calls, 1)


class SpeculativeState(NamedTuple):
    seq: Sequences
    target_cache: Any
    draft_cache: Any
    noise_keys: jax.Array
    target_calls: jax.Array
    accepted: jax.Array
    tests: jax.Array


def residual_log_law(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``log norm(max(0, p - q))`` on the last axis; ``log p`` where ``p <= q`` everywhere (p = q up to
    rounding, when a rejection has probability zero anyway)."""
    residual = jnp.exp(log_p) - jnp.exp(log_q)
    positive = residual > 0
    log_r = sampling.log_normalize(jnp.where(positive, jnp.log(jnp.where(positive, residual, 1)), -jnp.inf))
    return jnp.where(jnp.any(positive, axis=-1, keepdims=True), log_r, log_p)


def _prefill(model: TokenModel, aligned: jax.Array, start: jax.Array, num_slots: int) -> Any:
    """Cache holding all prompt tokens but the last one."""
    cache = model.new_cache(aligned.shape[0], num_slots, start)
    if aligned.shape[1] > 1:
        _, cache = model(aligned[:, :-1], cache)
    return cache


def _logits_shape(model: TokenModel, aligned: jax.Array, cache: Any) -> jax.ShapeDtypeStruct:
    return counting.eval_shape(model, aligned[:, -1:], cache)[0]


@takes_models
def speculative(target_logits_fn: Callable, draft_logits_fn: Callable, *, gamma: int,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                min_p: float | None = None, eos_id: int | None = None, pad_id: int = 0,
                max_new_tokens: int | None = None, target_init_cache: Callable | None = None,
                draft_init_cache: Callable | None = None, rewind: Callable | None = None,
                max_len: int | None = None) -> Sampler:
    """Speculative sampler; see the module docstring (other arguments as in :func:`itscale.tokens.rollout`).

    Args:
      target_logits_fn, draft_logits_fn: token models over the same vocabulary.
      gamma: draft tokens per round (static, >= 1).
      target_init_cache, draft_init_cache: cache factories (``init_cache`` of ``rollout``) or None.
      rewind: ``rewind(cache, num_positions) -> cache`` for caches without a ``lengths`` field.
    """
    decoding, params = sampling.decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         eos_id=eos_id, pad_id=pad_id)
    gamma = checks.positive_int("gamma", gamma)
    max_new_budget = new_tokens_budget(max_new_tokens)
    target = token_model("target_logits_fn", target_logits_fn, target_init_cache, rewind, max_len)
    draft = token_model("draft_logits_fn", draft_logits_fn, draft_init_cache, rewind, max_len)
    offsets = jnp.arange(gamma + 1)

    def init(key, x, params, ctx=None):
        max_new_tokens = resolve_new_tokens(max_new_budget, ctx)
        prompts, lengths = sequences.parse_prompts(x)
        batch, prompt_len = prompts.shape
        target.check_length(prompt_len, max_new_tokens)
        aligned, start = sequences.align_prompts(prompts, lengths, decoding.pad_id)
        num_slots = prompt_len + max_new_tokens + gamma + 1
        target_cache = _prefill(target, aligned, start, num_slots)
        draft_cache = _prefill(draft, aligned, start, num_slots)
        logits = _logits_shape(target, aligned, target_cache)
        vocab, draft_vocab = logits.shape[-1], _logits_shape(draft, aligned, draft_cache).shape[-1]
        if draft_vocab != vocab:
            raise ValueError(f"draft_logits_fn has a vocabulary of {draft_vocab} tokens but target_logits_fn "
                             f"has {vocab}; speculative sampling needs the same vocabulary")
        decoding.check_vocab(vocab)
        seq = sequences.start_sequences(aligned, start, max_new_tokens, decoding.pad_id,
                                        sampling.float_dtype(logits.dtype))
        zeros = jnp.zeros((batch,), jnp.int32)
        keys = noise.row_keys(key, batch)
        return SpeculativeState(seq, target_cache, draft_cache, keys, zeros, zeros, zeros)

    def draft_tokens(state, params):
        """gamma + 1 one-position draft calls: d_1..d_gamma with their laws q_1..q_gamma (and d_gamma fed)."""
        position = state.seq.position

        def one(carry, j):
            cache, previous = carry
            logits, cache = draft(previous[:, None], cache)
            log_q = sampling.sampling_log_probs(logits[:, 0], params, decoding)
            gumbel = noise.gumbel_at(state.noise_keys, (position + j)[:, None], log_q.shape[-1], log_q.dtype,
                                     noise.DRAFT)[:, 0]
            token = sampling.gumbel_max(log_q, gumbel, decoding.pad_id)
            return (cache, token), (token, log_q)

        (cache, _), (tokens, log_q) = counting.scan(one, (state.draft_cache, state.seq.last_token()), offsets)
        return cache, tokens[:gamma].T, jnp.moveaxis(log_q[:gamma], 0, 1)

    def round_(state, params):
        seq = state.seq
        running = ~seq.done
        draft_cache, drafts, log_q = draft_tokens(state, params)                   # (B, g), (B, g, V)
        fed = jnp.concatenate([seq.last_token()[:, None], drafts], axis=1)
        logits, target_cache = target(fed, state.target_cache)                      # (B, g + 1, V)
        log_p = sampling.sampling_log_probs(logits, params, decoding)
        positions = seq.position[:, None] + offsets
        # Accept d_j with probability min(1, p_j(d_j) / q_j(d_j)), until the first rejection.
        log_u = jnp.log(noise.uniform_at(state.noise_keys, positions[:, :gamma], log_p.dtype))
        ratio = sampling.pick(log_p[:, :gamma], drafts) - sampling.pick(log_q, drafts)
        accept = (log_u < ratio) & jnp.isfinite(sampling.pick(log_q, drafts))
        k = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1, dtype=jnp.int32)  # in [0, gamma]
        # Correction at index k: norm(max(0, p_k - q_k)), or p_{gamma+1} (q = 0) after gamma acceptances.
        def at_draft(log_law, index):  # log_law[b, index[b]]: row-local, stays split on a sharded batch
            return jnp.take_along_axis(log_law, index[:, None, None], axis=1)[:, 0]

        p_k = at_draft(log_p, k)
        q_k = jnp.where((k < gamma)[:, None], at_draft(log_q, jnp.minimum(k, gamma - 1)), -jnp.inf)
        log_r = residual_log_law(p_k, q_k)
        gumbel = noise.gumbel_at(state.noise_keys, (seq.position + k)[:, None], log_p.shape[-1],
                                 log_p.dtype)[:, 0]
        correction = sampling.gumbel_max(log_r, gumbel, decoding.pad_id)
        proposals = jnp.concatenate([drafts, correction[:, None]], axis=1)
        tokens = jnp.where(offsets < k[:, None], proposals, correction[:, None]).astype(jnp.int32)
        model_log_probs = sampling.pick(sampling.model_log_probs(logits), tokens)
        seq, _ = sequences.append(seq, tokens, model_log_probs, sampling.pick(log_p, tokens),
                                  jnp.where(running, k + 1, 0), decoding)
        back = jnp.where(running, gamma - k, gamma + 1)
        count = running.astype(jnp.int32)
        return SpeculativeState(seq, target.rewind(target_cache, back), draft.rewind(draft_cache, back),
                                state.noise_keys, state.target_calls + count, state.accepted + count * k,
                                state.tests + count * jnp.minimum(k + 1, gamma))

    def step(key, state, ctx, params):
        state = counting.unless(jnp.all(state.seq.done), lambda s: round_(s, params), state)
        return state, {"running": jnp.sum(~state.seq.done)}

    def finalize(state):
        out = sequences.generation(state.seq, decoding.pad_id)
        return SpeculativeGeneration(*out, state.target_calls, state.accepted, state.tests)

    def watch(state):
        """All but the KV caches (their NaN reach the sequences' log-probabilities)."""
        return state._replace(target_cache=None, draft_cache=None)

    return Sampler(init, step, finalize, params, watch, validate=validate_tokens(target, draft),
                   nfe_per_step=2 * (gamma + 1))
