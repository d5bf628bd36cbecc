"""Step-structured generation: reasoning steps delimited by a separator token or a fixed length.

A *step* of a completion ends at a ``separator_id`` token (included), after ``step_length`` tokens
since the previous end, or at the end of the completion (a last, partial step), whichever comes first.
:func:`step_ends` and :func:`step_index` find the steps in a :class:`itscale.tokens.Generation`, e.g. to
score every prefix that ends a step with a process verifier. :func:`step_rollout` is a sampler whose
run step generates one reasoning step per row, so step-level search (beam search, particle filtering
with a process reward, DVTS) works on it with one search step per reasoning step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks, counting
from itscale.core.keys import split_per_particle
from itscale.core.sampler import Sampler
from itscale.tokens import sampling, sequences
from itscale.tokens.model import token_model, validate_tokens
from itscale.tokens.noise import row_keys
from itscale.tokens.rollout import decode_token, new_tokens_budget, prefill, resolve_new_tokens, watch_outputs
from itscale.tokens.sampling import check_token_id
from itscale.core.weights import takes_models


def _check_split(separator_id, step_length) -> tuple[int | None, int | None]:
    if separator_id is None and step_length is None:
        raise ValueError("give separator_id (steps end at that token), step_length (steps of that many "
                         "tokens) or both")
    separator_id = None if separator_id is None else check_token_id("separator_id", separator_id)
    step_length = None if step_length is None else checks.positive_int("step_length", step_length)
    return separator_id, step_length


def step_ends(tokens, lengths, prompt_lengths, *, separator_id: int | None = None,
              step_length: int | None = None) -> jax.Array:
    """(batch, L) bool: True at the last token of every step of each row's completion.

    ``tokens`` (batch, L), ``lengths`` and ``prompt_lengths`` (batch,) as in a ``Generation``; the
    completion of row ``b`` is ``tokens[b, prompt_lengths[b]:lengths[b]]``.
    """
    separator_id, step_length = _check_split(separator_id, step_length)
    tokens = checks.int_array("tokens", tokens, ndim=2)
    lengths = checks.int_array("lengths", lengths, ndim=1)
    prompt_lengths = checks.int_array("prompt_lengths", prompt_lengths, ndim=1)
    batch = tokens.shape[0]
    if lengths.shape != (batch,) or prompt_lengths.shape != (batch,):
        raise ValueError(f"lengths and prompt_lengths must have shape ({batch},), got {lengths.shape} "
                         f"and {prompt_lengths.shape}")

    def column(count, t):
        inside = (t >= prompt_lengths) & (t < lengths)
        count = jnp.where(inside, count + 1, 0)
        end = inside & (t == lengths - 1)
        if separator_id is not None:
            end = end | (inside & (tokens[:, t] == separator_id))
        if step_length is not None:
            end = end | (count == step_length)
        return jnp.where(end, 0, count), end

    _, ends = lax.scan(column, jnp.zeros((batch,), jnp.int32), jnp.arange(tokens.shape[1]))
    return ends.T


def step_index(tokens, lengths, prompt_lengths, *, separator_id: int | None = None,
               step_length: int | None = None) -> jax.Array:
    """(batch, L) int32: 0-based step of each completion token, -1 on the prompt and the padding."""
    ends = step_ends(tokens, lengths, prompt_lengths, separator_id=separator_id, step_length=step_length)
    columns = jnp.arange(ends.shape[1])
    inside = (columns >= jnp.asarray(prompt_lengths)[:, None]) & (columns < jnp.asarray(lengths)[:, None])
    before = jnp.cumsum(ends, axis=1, dtype=jnp.int32) - ends
    return jnp.where(inside, before, -1)


def _group_row_keys(key, groups: int, size: int) -> jax.Array:
    """(groups·size,) noise keys: ``row_keys`` of each group's key ``split_per_particle(key, groups)[g]``."""
    if groups == 1:
        return row_keys(key, size)
    keys = jax.vmap(row_keys, in_axes=(0, None))(split_per_particle(key, groups), size)
    return keys.reshape((groups * size,) + keys.shape[2:])


class _StepLoop(NamedTuple):
    decode: object
    ended: jax.Array          # (batch,) the row's current reasoning step is over
    count: jax.Array          # () tokens iterations run in this step
    log_prob: jax.Array       # (batch,) sum of the step's sampling log-probs
    model_log_prob: jax.Array  # (batch,) sum of the step's model log-probs


@takes_models
def step_rollout(logits_fn: Callable, *, step_length: int, separator_id: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, eos_id: int | None = None, pad_id: int = 0,
                 max_new_tokens: int | None = None, init_cache: Callable | None = None,
                 rewind: Callable | None = None, max_len: int | None = None,
                 noise: str = "position", group_size: int | None = None) -> Sampler:
    """Autoregressive sampler whose run step generates one reasoning step per row.

    A row's step ends at ``separator_id`` (kept) or after ``step_length`` tokens; rows whose step ended
    wait (their feeds are rewound) while the others finish theirs, and the token loop stops when every
    row is done (``itscale.core.while_loop``: NFE = batch per token iteration actually run, plus the
    prefill). Other arguments as in :func:`itscale.tokens.rollout`; ``rewind`` as in ``jacobi``.
    ``max_new_tokens`` (None, default): ``num_steps · step_length`` new columns, ``num_steps`` read by
    ``init`` from its context (a run step generates at most ``step_length`` tokens).

    ``group_size`` (static; None: all rows form one group): the step takes the rows as consecutive
    groups of that many independent runs (e.g. the particles of each query), with the noise and the
    NFE that ``its.particles(sampler, G)`` would give the G groups: group ``g`` draws with
    ``split_per_particle(key, G)[g]`` and counts ``group_size`` NFE per token iteration while one of
    its rows is active. One token loop serves all the rows: a ``vmap`` over groups of this step would
    turn the loop's batched stopping test into a select of every carried array (the whole KV cache)
    at every token. Waiting rows keep their state (their feeds are rewound), so the tokens are those
    of the per-group loops. The shared loop also evaluates the rows of groups that have stopped while
    others run; those evaluations are computed but not charged, and the step ``info["padded_nfe"]``
    reports them (0 with one group), so counted NFE and the work the device did are both visible.

    The step ``info`` holds, per row, ``log_prob`` and ``model_log_prob`` (sums over the step's tokens
    under the sampling law and the model) and ``step_tokens``, for step-level weights; and
    ``padded_nfe`` (a scalar, see ``group_size``).
    """
    step_length = checks.positive_int("step_length", step_length)
    separator_id, _ = _check_split(separator_id, step_length)
    decoding, params = sampling.decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                         eos_id=eos_id, pad_id=pad_id)
    max_new_tokens = new_tokens_budget(max_new_tokens)
    noise_mode = checks.choice("noise", noise, ("position", "step"))
    model = token_model("logits_fn", logits_fn, init_cache, rewind, max_len)
    group_size = None if group_size is None else checks.positive_int("group_size", group_size)

    def init(key, x, params, ctx=None):
        new_tokens = resolve_new_tokens(max_new_tokens, ctx, per_step=step_length)
        return prefill(model, key, x, max_new_tokens=new_tokens, extra_slots=0, decoding=decoding)

    def step(key, state, ctx, params):
        rows = state.seq.position.shape[0]
        size = rows if group_size is None else group_size
        if rows % size:
            raise ValueError(f"group_size={size} must divide the number of rows, got {rows} rows")
        groups = rows // size
        keys = None if noise_mode == "position" else _group_row_keys(key, groups, size)
        zeros = jnp.zeros(state.seq.position.shape, state.seq.log_probs.dtype)

        def running(loop):
            return (loop.count < step_length) & jnp.any(~loop.ended & ~loop.decode.seq.done)

        def token(loop):
            active = ~loop.ended & ~loop.decode.seq.done
            decode, info = decode_token(model, loop.decode, params, decoding, noise_keys=keys, active=active)
            ended = loop.ended
            if separator_id is not None:
                ended = ended | (active & (info["token"] == separator_id))
            return _StepLoop(decode, ended, loop.count + 1,
                             loop.log_prob + jnp.where(active, info["log_prob"], 0),
                             loop.model_log_prob + jnp.where(active, info["model_log_prob"], 0))

        def running_groups(loop):
            active = ~loop.ended & ~loop.decode.seq.done
            return jnp.sum(jnp.any(active.reshape(groups, size), axis=1), dtype=jnp.int32)

        if groups > 1:  # NFE of the groups whose loop would still run: the model call is counted inside
            token = counting.counted(token, cost=lambda loop: size * running_groups(loop))
        start = _StepLoop(state, jnp.zeros(zeros.shape, bool), jnp.zeros((), jnp.int32), zeros, zeros)
        loop = counting.while_loop(running, token, start)
        step_tokens = loop.decode.seq.generated - state.seq.generated
        # A group's loop runs as many iterations as its longest step; the shared loop ran loop.count.
        charged = size * jnp.sum(jnp.max(step_tokens.reshape(groups, size), axis=1), dtype=jnp.int32)
        info = {"log_prob": loop.log_prob, "model_log_prob": loop.model_log_prob, "step_tokens": step_tokens,
                "padded_nfe": rows * loop.count - charged}
        return loop.decode, info

    def finalize(state):
        return sequences.generation(state.seq, decoding.pad_id)

    return Sampler(init, step, finalize, params, watch=watch_outputs, validate=validate_tokens(model),
                   nfe_per_step=step_length)
