"""The token buffer shared by the token samplers, EOS masking, and the output format :class:`Generation`.

Input. ``x`` is ``prompts`` (batch, P) int (every row P tokens) or a pair ``(prompts, lengths)`` with
``prompts`` right-padded: row ``b``'s prompt is ``prompts[b, :lengths[b]]`` (``lengths`` is clipped to
``[1, P]``: a prompt needs at least one token, e.g. a BOS token). Inside, prompts are stored
right-aligned (left-padded, ``start[b] = P - lengths[b]`` pad slots first) so that every row's next
token goes to the same column; the model sees the padding through its cache's ``start``.

Output. :class:`Generation` holds right-padded sequences: row ``b`` is its prompt, then its new tokens,
then ``pad_id``. ``log_probs[b, i]`` and ``sample_log_probs[b, i]`` belong to new token ``i`` of row ``b``
(at ``tokens[b, prompt_lengths[b] + i]``).

EOS. A row that emits ``eos_id`` is finished: the EOS token itself is kept and counted in ``lengths``;
every later position holds ``pad_id`` with log-probabilities 0. Samplers keep calling the model on
finished rows while any row is running (static shapes), and count those evaluations in
``stats.nfe``: NFE is what was computed, ``lengths`` what is meaningful.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sharding import write_columns
from itscale.tokens.sampling import Decoding


class Generation(NamedTuple):
    """Output of ``rollout`` (and prefix of the outputs of ``jacobi``, ``speculative``, ``step_rollout``).

    tokens: (batch, P + max_new_tokens) int32, right-padded prompt + completion.
    log_probs: (batch, max_new_tokens) log-probability of each new token under the model (temperature
        1, no truncation); 0 after EOS and for positions not generated.
    sample_log_probs: (batch, max_new_tokens) the same under the sampling law actually used.
    lengths: (batch,) int32 meaningful length of each row (prompt + new tokens up to and including EOS).
    prompt_lengths: (batch,) int32.
    finished: (batch,) bool, the row emitted ``eos_id``.
    """

    tokens: jax.Array
    log_probs: jax.Array
    sample_log_probs: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    finished: jax.Array


class Sequences(NamedTuple):
    """Sampler state: the token buffer (prompts right-aligned in the first P columns) and row status."""

    tokens: jax.Array            # (batch, P + N) int32
    log_probs: jax.Array         # (batch, N)
    sample_log_probs: jax.Array  # (batch, N)
    start: jax.Array             # (batch,) int32 left padding of the prompt
    position: jax.Array          # (batch,) int32 new-token columns decided
    generated: jax.Array         # (batch,) int32 meaningful new tokens
    finished: jax.Array          # (batch,) bool

    @property
    def max_new_tokens(self) -> int:
        return self.log_probs.shape[1]

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.log_probs.shape[1]

    @property
    def done(self) -> jax.Array:
        """(batch,) bool: the row has nothing left to generate (EOS emitted or buffer full)."""
        return self.finished | (self.position >= self.max_new_tokens)

    def last_token(self) -> jax.Array:
        """(batch,) the last decided token of each row (the last prompt token before any new one)."""
        column = self.prompt_len + self.position - 1
        return jnp.take_along_axis(self.tokens, column[:, None], axis=1)[:, 0]


def split_prompts(x) -> tuple[Any, Any]:
    """``(prompts, lengths or None)`` as given: a tuple, or a list of two arrays, is the pair
    ``(prompts, lengths)``; any other list is the prompts themselves (``[[1, 2], [3, 4]]``)."""
    pair_as_list = isinstance(x, list) and len(x) == 2 and not any(isinstance(part, list) for part in x) \
        and all(jnp.ndim(part) >= 1 for part in x)
    if isinstance(x, tuple) or pair_as_list:
        if len(x) != 2:
            raise ValueError("x must be prompts (batch, P) or a pair (prompts, lengths), got a tuple of "
                             f"{len(x)}")
        return x[0], x[1]
    return (jnp.asarray(x) if isinstance(x, list) else x), None


def parse_prompts(x) -> tuple[jax.Array, jax.Array]:
    """``(prompts, lengths)`` int32 from ``prompts`` or ``(prompts, lengths)``; see the module docstring."""
    prompts, lengths = split_prompts(x)
    if jnp.ndim(prompts) == 1:
        raise ValueError(f"prompts must be an int array of shape (batch, prompt_len), got shape "
                         f"{jnp.shape(prompts)}; a single prompt is [[t0, t1, ...]] (or prompts[None])")
    prompts = checks.int_array("prompts", prompts, ndim=2).astype(jnp.int32)
    batch, prompt_len = prompts.shape
    if prompt_len == 0:
        raise ValueError("prompts must hold at least one token per row (e.g. a BOS token), got shape "
                         f"{prompts.shape}")
    if lengths is None:
        return prompts, jnp.full((batch,), prompt_len, jnp.int32)
    lengths = checks.int_array("lengths", lengths, ndim=1)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one prompt length per row), "
                         f"got {lengths.shape}")
    return prompts, jnp.clip(lengths, 1, prompt_len).astype(jnp.int32)


def align_prompts(prompts: jax.Array, lengths: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Right-align right-padded prompts: ``(aligned (batch, P), start (batch,))``, ``start = P - lengths``."""
    prompt_len = prompts.shape[1]
    start = (prompt_len - lengths).astype(jnp.int32)
    source = jnp.arange(prompt_len) - start[:, None]
    aligned = jnp.where(source >= 0, jnp.take_along_axis(prompts, jnp.maximum(source, 0), axis=1), pad_id)
    return aligned.astype(jnp.int32), start


def start_sequences(aligned: jax.Array, start: jax.Array, max_new_tokens: int, pad_id: int,
                    dtype) -> Sequences:
    """Buffer with the right-aligned prompts and ``max_new_tokens`` pad columns after them; log-probs in
    ``dtype``."""
    batch = aligned.shape[0]
    tokens = jnp.concatenate([aligned, jnp.full((batch, max_new_tokens), pad_id, jnp.int32)], axis=1)
    zeros = jnp.zeros((batch, max_new_tokens), dtype)
    counter = jnp.zeros((batch,), jnp.int32)
    return Sequences(tokens, zeros, zeros, start, counter, counter, jnp.zeros((batch,), bool))


def append(seq: Sequences, tokens: jax.Array, log_probs: jax.Array, sample_log_probs: jax.Array,
           count: jax.Array, decoding: Decoding) -> tuple[Sequences, jax.Array]:
    """Write the first ``count[b]`` of ``tokens`` (batch, k) after row ``b``'s decided tokens.

    Tokens after an EOS (earlier or in this chunk) become ``pad_id`` with log-probabilities 0; writes
    past the buffer are dropped. Returns the new state and the tokens as written (batch, k).
    """
    k = tokens.shape[1]
    slot = jnp.arange(k)
    count = jnp.clip(count, 0, seq.max_new_tokens - seq.position)
    valid = slot < count[:, None]
    if decoding.eos_id is None:
        eos = jnp.zeros_like(valid)
    else:
        eos = valid & (tokens == decoding.eos_id)
    eos_before = (jnp.cumsum(eos, axis=1) - eos) > 0
    keep = valid & ~seq.finished[:, None] & ~eos_before
    written = jnp.where(keep, tokens, decoding.pad_id).astype(jnp.int32)
    column = jnp.where(valid, seq.position[:, None] + slot, seq.max_new_tokens)      # out of range: dropped
    zero = jnp.zeros((), seq.log_probs.dtype)
    seq = seq._replace(
        tokens=write_columns(seq.tokens, seq.prompt_len + column, written),
        log_probs=write_columns(seq.log_probs, column, jnp.where(keep, log_probs, zero)),
        sample_log_probs=write_columns(seq.sample_log_probs, column, jnp.where(keep, sample_log_probs, zero)),
        position=seq.position + count,
        generated=seq.generated + jnp.sum(keep, axis=1, dtype=jnp.int32),
        finished=seq.finished | jnp.any(eos & keep, axis=1))
    return seq, written


def generation(seq: Sequences, pad_id: int) -> Generation:
    """The right-padded :class:`Generation` of a buffer."""
    width = seq.tokens.shape[1]
    source = jnp.arange(width) + seq.start[:, None]
    shifted = jnp.take_along_axis(seq.tokens, jnp.minimum(source, width - 1), axis=1)
    tokens = jnp.where(source < width, shifted, pad_id)
    prompt_lengths = seq.prompt_len - seq.start
    return Generation(tokens, seq.log_probs, seq.sample_log_probs, prompt_lengths + seq.generated,
                      prompt_lengths, seq.finished)
