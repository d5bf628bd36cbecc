"""Verifiers of the arithmetic task (:mod:`itscale.verifiers.arithmetic_task`): the exact outcome check,
the process verifier that compares each generated step with the exact working, and a noisy verifier.

The task's names (``sample_problems``, ``encode``, ``VOCAB_SIZE``, ...) are re-exported here, so
``from itscale.verifiers import arithmetic`` gives the task and its verifiers in one namespace. Every
function is batched over the leading axis, order preserving, vectorized (no Python loop over rows) and
jit-compiled; sizes (batch, max_digits) are static Python ints.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.verifiers.arithmetic_task import (
    ANSWER, EOS, EQUALS, MAX_DIGITS, PAD, PLUS, SEP, STEP_LENGTH, VOCAB, VOCAB_SIZE, Problems,
    completion_length, decode, encode, extract_answer, format_prompt, parse_prompt, prompt_length,
    sample_problems, worked_solution)
from itscale.verifiers.arithmetic_task import _POW10, _first, _max_digits, _parse_prompt

__all__ = [
    "ANSWER", "EOS", "EQUALS", "MAX_DIGITS", "PAD", "PLUS", "SEP", "STEP_LENGTH", "VOCAB", "VOCAB_SIZE",
    "Problems", "StepCheck", "completion_length", "decode", "encode", "extract_answer", "format_prompt",
    "is_correct", "noisy_verifier", "outcome_reward", "parse_prompt", "prefix_correct", "process_reward",
    "prompt_length", "sample_problems", "worked_solution",
]


@jax.jit
def is_correct(prompt_tokens: jax.Array, completion_tokens: jax.Array) -> jax.Array:
    """Exact outcome check (batch,) bool: the extracted answer equals a + b (the working is not read)."""
    a, b = parse_prompt(prompt_tokens)
    answer = extract_answer(completion_tokens)
    return (a >= 0) & (b >= 0) & (answer >= 0) & (answer == a + b)


@jax.jit
def outcome_reward(prompt_tokens: jax.Array, completion_tokens: jax.Array) -> jax.Array:
    """:func:`is_correct` as a float32 reward in {0, 1}."""
    return is_correct(prompt_tokens, completion_tokens).astype(jnp.float32)


class StepCheck(NamedTuple):
    """Per-step verdicts (batch, max_digits + 1), steps in the order they are generated.

    Step k is the k-th segment of the completion ended by ``;`` or EOS: the digit steps, then the
    answer segment ``#...``. ``completed[b, k]``: that segment has been generated (its terminator is
    present, at or before the first EOS). ``correct[b, k]``: the completion up to and including that
    segment equals the exact working (so it is completed, and so are all earlier steps).
    """

    correct: jax.Array
    completed: jax.Array


@functools.partial(jax.jit, static_argnames="max_digits")
def prefix_correct(tokens: jax.Array, max_digits: int) -> StepCheck:
    """Process verifier from the exact working: which generated steps are consistent with it.

    ``tokens`` (batch, L) are full sequences, prompt then (possibly partial) completion; the
    completion starts after the first ``=``. A malformed prompt, or an operand of more than
    ``max_digits`` digits, makes every step incorrect (the working is built ``max_digits`` wide).
    """
    generated, exact, valid = _against_working(tokens, max_digits)
    num_steps = _max_digits(max_digits) + 1
    matched = _first(generated != exact)                                           # length of equal prefix
    step = np.arange(num_steps)
    # end of the k-th segment of the exact working = position of its (k+1)-th terminator
    exact_ends = _running_count((exact == SEP) | (exact == EOS))               # (B, E)
    exact_end = _first(exact_ends[:, None, :] == step[None, :, None] + 1)
    exists = step[None, :] < exact_ends[:, -1:]
    correct = exists & (matched[:, None] > exact_end) & valid[:, None]
    # generated terminators up to and including the first EOS
    after_eos = _running_count(generated == EOS) - (generated == EOS) > 0
    terminators = jnp.sum(((generated == SEP) | (generated == EOS)) & ~after_eos, axis=1)
    return StepCheck(correct, step[None, :] < terminators[:, None])


@functools.partial(jax.jit, static_argnames="max_digits")
def process_reward(tokens: jax.Array, max_digits: int) -> jax.Array:
    """1.0 if every completed step of each sequence is consistent with the exact working, else 0.0.

    ``all(correct | ~completed)`` of :func:`prefix_correct` without its per-step bookkeeping (a search
    calls this after every token): let m be the first position where the generated completion departs
    from the working before the working's EOS. Before m the completion is the working, which has no
    EOS before its end, so the first generated EOS is at or after m; hence every completed step is
    right iff no step terminator (``;`` or EOS) is generated at or after m (m = 0 for a malformed or
    out-of-range prompt: right iff no step is completed).
    """
    generated, exact, valid = _against_working(tokens, max_digits)
    departs = jnp.where(valid, _first((generated != exact) & (exact != PAD)), 0)
    terminator = (generated == SEP) | (generated == EOS)
    wrong = jnp.any(terminator & (np.arange(exact.shape[1]) >= departs[:, None]), axis=1)
    return jnp.where(wrong, 0.0, 1.0).astype(jnp.float32)


def noisy_verifier(reward_fn: Callable[..., jax.Array], seed: int | jax.Array, noise: float | jax.Array
                   ) -> Callable[..., jax.Array]:
    """``reward_fn`` plus ``noise * z``, z ~ N(0, 1) a deterministic function of (seed, sequence).

    z is derived from a hash of each row's integer token arrays among the arguments (all of them,
    positions included), so the same sequence always gets the same perturbation whatever its batch,
    position or order; searching harder against the noisy reward then selects lucky sequences
    (verifier over-optimization, cf. Gao et al. 2022, arXiv 2210.10760). ``seed``: an int (or int
    array) or a PRNG key; ``seed`` and ``noise`` may be traced, so sweeping them does not recompile.
    """
    is_key = isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
    key = seed if is_key else jax.random.key(seed)

    def noisy(*args: Any) -> jax.Array:
        reward = reward_fn(*args)
        rows = [jnp.asarray(x) for x in args
                if jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer) and jnp.ndim(x) >= 1]
        if not rows:
            raise TypeError("noisy_verifier needs at least one integer token array argument to hash")
        hashes = _row_hash(jnp.concatenate([r.reshape(r.shape[0], -1) for r in rows], axis=1))
        z = jax.vmap(lambda h: jax.random.normal(jax.random.fold_in(key, h)))(hashes)
        return reward + jnp.asarray(noise, reward.dtype) * z.astype(reward.dtype)

    return noisy


# ------------------------------------------------------------------------------
def _against_working(tokens: jax.Array, max_digits: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The generated completion (after the first ``=``, PAD past the end) and the exact working, both
    (B, completion_length), and whether the prompt is well formed with operands of <= max_digits."""
    tokens = checks.int_array("tokens", tokens, ndim=2)
    max_digits = _max_digits(max_digits)
    a, b, equals = _parse_prompt(tokens)
    valid = (a >= 0) & (b >= 0) & (a < _POW10[max_digits]) & (b < _POW10[max_digits])
    exact = worked_solution(jnp.where(valid, a, 0), jnp.where(valid, b, 0), max_digits)
    index = equals[:, None] + 1 + np.arange(exact.shape[1])
    generated = jnp.where(index < tokens.shape[1],
                          jnp.take_along_axis(tokens, jnp.minimum(index, tokens.shape[1] - 1), axis=1,
                                              mode="promise_in_bounds"), PAD)
    return generated, exact, valid


def _running_count(mask: jax.Array) -> jax.Array:
    """Inclusive running count of True along the last axis, int32.

    One float32 matrix product with a triangular matrix of ones (exact below 2^24): on CPU ``cumsum``
    lowers to a much slower windowed reduction.
    """
    order = np.arange(mask.shape[-1])
    triangle = jnp.asarray(order[:, None] <= order[None, :], jnp.float32)
    return jnp.matmul(mask.astype(jnp.float32), triangle).astype(jnp.int32)


def _row_hash(tokens: jax.Array) -> jax.Array:
    """uint32 hash of each row: sum over positions of a mixed (token, position), then mixed again."""
    tokens = tokens.astype(jnp.uint32)
    pos = jnp.arange(tokens.shape[1], dtype=jnp.uint32)
    per_token = _mix(tokens * jnp.uint32(0x9E3779B1) + pos * jnp.uint32(0x85EBCA77) + jnp.uint32(1))
    return _mix(jnp.sum(per_token, axis=1, dtype=jnp.uint32) ^ jnp.uint32(tokens.shape[1]))


def _mix(h: jax.Array) -> jax.Array:
    """murmur3 32-bit finalizer."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)
