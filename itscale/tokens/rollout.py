"""``rollout``: autoregressive sampling with a KV cache, one new token per step.

``init`` prefills the prompts (one model call on the (batch, P) block: NFE = batch x P) and keeps the
logits of the next position; step ``i`` draws new token ``i`` from them with decoding controls
(``itscale.tokens.sampling``), writes it (EOS masking: ``itscale.tokens.sequences``) and feeds it
(NFE = batch per step, finished rows included), so ``its.run(sampler, key, prompts, num_steps=N)``
costs exactly ``batch x (P + N)`` NFE; the last feed leaves the state ready to continue.

Noise (``noise="position"``, default): token ``i`` of row ``b`` is ``argmax(log q + g[b, i])`` with Gumbel
noise ``g`` fixed by (run key, b, i) (``itscale.tokens.noise``), so ``jacobi`` with the same key returns
the same tokens bit for bit. ``noise="step"`` draws ``g`` from the step key instead. Either way,
resampling (:mod:`itscale.search.in_place`) leaves the per-row keys in their slots, so copies of a row
made by SMC or a tree search diverge afterwards.

The output holds ``max_new_tokens`` new columns; by default (None) that is the run's static
``num_steps``, which ``init`` reads from its context (``init(key, x, params, ctx)``, ``ctx.num_steps``),
so ``its.run(rollout(f), key, prompts, num_steps=N)`` returns ``tokens`` of shape (batch, P + N). A
sampler built with ``max_new_tokens=M`` and run for fewer steps leaves pad columns; more steps raise
``ValueError``. Called outside ``its.run`` without a context, the ``init`` of a rollout built without
``max_new_tokens`` raises ``ValueError`` naming ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler, StepContext
from itscale.tokens import sampling, sequences
from itscale.tokens.model import TokenModel, token_model, validate_tokens
from itscale.tokens.noise import gumbel_at, row_keys
from itscale.tokens.sampling import Decoding
from itscale.tokens.sequences import Sequences
from itscale.core.weights import takes_models


class RolloutState(NamedTuple):
    """Every leaf leads with the batch axis."""

    seq: Sequences
    cache: Any
    next_logits: jax.Array   # (batch, V): the model's logits for each row's next position
    noise_keys: jax.Array    # (batch,) keys of the per-position noise


def new_tokens_budget(max_new_tokens) -> int | None:
    """Check the static output size shared by the token samplers (None: sized by ``init`` from the
    ``num_steps`` of its context, see :func:`resolve_new_tokens`)."""
    if max_new_tokens is None:
        return None
    return checks.positive_int("max_new_tokens", max_new_tokens)


def resolve_new_tokens(max_new_tokens: int | None, ctx: StepContext | None, *, per_step: int = 1) -> int:
    """The output size: ``max_new_tokens``, or ``per_step`` tokens for each of the ``ctx.num_steps``
    steps of the run (or chain phase) that calls ``init``."""
    if max_new_tokens is not None:
        return max_new_tokens
    if ctx is None:
        raise ValueError("this sampler was built without max_new_tokens, so its output size is the run's "
                         "num_steps, which init receives in its context: call init(key, x, params, ctx) "
                         "with ctx = StepContext(0, num_steps), run it with its.run, or build it with "
                         "max_new_tokens=")
    return per_step * ctx.num_steps


def prefill(model: TokenModel, key, x, *, max_new_tokens: int, extra_slots: int,
            decoding: Decoding) -> RolloutState:
    """Prompt buffer, a cache of ``P + max_new_tokens + extra_slots`` slots and the prompt's next logits."""
    prompts, lengths = sequences.parse_prompts(x)
    batch, prompt_len = prompts.shape
    model.check_length(prompt_len, max_new_tokens)
    aligned, start = sequences.align_prompts(prompts, lengths, decoding.pad_id)
    cache = model.new_cache(batch, prompt_len + max_new_tokens + extra_slots, start)
    logits, cache = model(aligned, cache)
    decoding.check_vocab(logits.shape[-1])
    seq = sequences.start_sequences(aligned, start, max_new_tokens, decoding.pad_id,
                                    sampling.float_dtype(logits.dtype))
    return RolloutState(seq, cache, logits[:, -1], row_keys(key, batch))


def decode_token(model: TokenModel, state: RolloutState, params, decoding: Decoding, *,
                 noise_keys: jax.Array | None = None,
                 active: jax.Array | None = None) -> tuple[RolloutState, dict]:
    """Draw, write and feed one token per row.

    ``noise_keys``: keys of the Gumbel noise (default: the state's per-position keys). ``active`` (batch,)
    bool: rows that take the token; the others keep their state (their feed is rewound).
    """
    seq = state.seq
    keys = state.noise_keys if noise_keys is None else noise_keys
    log_q = sampling.sampling_log_probs(state.next_logits, params, decoding)
    gumbel = gumbel_at(keys, seq.position[:, None], log_q.shape[-1], log_q.dtype)[:, 0]
    token = sampling.gumbel_max(log_q, gumbel, decoding.pad_id)
    log_prob = sampling.pick(sampling.model_log_probs(state.next_logits), token)
    sample_log_prob = sampling.pick(log_q, token)
    count = jnp.ones_like(seq.position) if active is None else active.astype(jnp.int32)
    seq, written = sequences.append(seq, token[:, None], log_prob[:, None], sample_log_prob[:, None], count,
                                    decoding)
    logits, cache = model(written, state.cache)
    next_logits = logits[:, 0]
    if active is not None:
        cache = model.rewind(cache, (~active).astype(jnp.int32))
        next_logits = jnp.where(active[:, None], next_logits, state.next_logits)
    info = {"token": written[:, 0], "log_prob": sample_log_prob, "model_log_prob": log_prob}
    return RolloutState(seq, cache, next_logits, state.noise_keys), info


def watch_outputs(state: RolloutState):
    """What ``its.run`` checks for non-finite values: the sequences and the next logits, not the KV
    cache (a NaN written to the cache comes from hidden states that make the same forward's logits
    NaN, so it is seen there without reading the whole cache every step)."""
    return state.seq, state.next_logits


@takes_models
def rollout(logits_fn: Callable, *, temperature: float = 1.0, top_k: int | None = None,
            top_p: float | None = None, min_p: float | None = None, eos_id: int | None = None,
            pad_id: int = 0, max_new_tokens: int | None = None, init_cache: Callable | None = None,
            max_len: int | None = None, noise: str = "position") -> Sampler:
    """Autoregressive sampler; see the module docstring.

    Args:
      logits_fn: ``logits_fn(tokens, cache) -> (logits, cache)`` (``itscale.tokens.model``).
      temperature, top_p, min_p: default values of the traced ``params`` (``top_p``/``min_p`` stages exist
        only when given); ``temperature=0`` is greedy. top_k: static.
      eos_id: token that finishes a row (None: rows never finish). pad_id: filler after EOS.
      max_new_tokens: static output size; None (default): the run's ``num_steps``.
      init_cache: ``init_cache(batch, max_len, start=start)`` or None (model without cache).
      max_len: the model's longest sequence, checked at trace time.
      noise: ``"position"`` (noise fixed per (row, position), shared with ``jacobi``) or ``"step"``.

    Returns a :class:`Sampler` whose output is a :class:`itscale.tokens.Generation` and whose step
    ``info`` holds the new ``token``, its ``log_prob`` under the sampling law and ``model_log_prob``.
    """
    decoding, params = sampling.decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         eos_id=eos_id, pad_id=pad_id)
    max_new_tokens = new_tokens_budget(max_new_tokens)
    noise_mode = checks.choice("noise", noise, ("position", "step"))
    model = token_model("logits_fn", logits_fn, init_cache, max_len=max_len)

    def init(key, x, params, ctx=None):
        return prefill(model, key, x, max_new_tokens=resolve_new_tokens(max_new_tokens, ctx), extra_slots=0,
                       decoding=decoding)

    def step(key, state, ctx, params):
        limit = state.seq.max_new_tokens
        if ctx.num_steps > limit:
            raise ValueError(f"this rollout holds max_new_tokens={limit} new tokens; run it with "
                             f"num_steps <= {limit}, got {ctx.num_steps}")
        keys = None if noise_mode == "position" else row_keys(key, state.seq.position.shape[0])
        return decode_token(model, state, params, decoding, noise_keys=keys)

    def finalize(state):
        return sequences.generation(state.seq, decoding.pad_id)

    return Sampler(init, step, finalize, params, watch=watch_outputs, validate=validate_tokens(model),
                   nfe_per_step=1)
