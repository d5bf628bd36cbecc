"""The arithmetic task: multi-digit addition written in tokens, with its worked solutions.

A problem ``a + b`` and its worked solution, one step per digit from the units up, each step
``a_i+b_i+c_i=c_{i+1}s_i;`` (digits of a and b at place i -- 0 past the end of the shorter number --,
carry in, then carry out and sum digit), then the answer marker, the answer and EOS::

    prompt      12+39=
    completion  2+9+0=11;1+3+1=05;#51.

Vocabulary: digits 0-9 are ids 0-9, then ``+ = ; # .`` (PLUS, EQUALS, SEP, ANSWER, EOS) and PAD
(shown ``_``). Numbers are written without leading zeros. Prompts are **left-padded** to
``prompt_length(max_digits)`` (so that a batch of prompts ends in the same column, the layout the
transformer's cache expects); completions are right-padded to ``completion_length(max_digits)``.
``max_digits`` is at most :data:`MAX_DIGITS` so that every number fits in int32.

This module defines the task (vocabulary, problem sampling, prompt and solution tokens, parsing of
prompts and answers); its verifiers are in :mod:`itscale.verifiers.arithmetic`, which re-exports
every name here. Every function is batched over the leading axis, order preserving, vectorized (no
Python loop over rows) and jit-compiled (one program per shape, not one dispatch per operation); sizes
(batch, max_digits) are static Python ints.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks

VOCAB = tuple("0123456789") + ("+", "=", ";", "#", ".", "_")
PLUS, EQUALS, SEP, ANSWER, EOS, PAD = range(10, 16)
VOCAB_SIZE = len(VOCAB)
STEP_LENGTH = 9          # a_i + b_i + c_i = c_{i+1} s_i ;
MAX_DIGITS = 8           # operands < 10^8: sums and parsed numbers (<= 9 digits) fit in int32
_MAX_PARSED_DIGITS = 9
_POW10 = np.array([10 ** i for i in range(_MAX_PARSED_DIGITS + 1)], np.int32)   # 1 .. 10^9


def prompt_length(max_digits: int) -> int:
    """Tokens of a padded prompt: two operands of up to ``max_digits`` digits, ``+`` and ``=``."""
    return 2 * _max_digits(max_digits) + 2


def completion_length(max_digits: int) -> int:
    """Tokens of a padded worked solution: ``max_digits`` steps, ``#``, up to max_digits+1 digits, EOS."""
    return STEP_LENGTH * _max_digits(max_digits) + _max_digits(max_digits) + 3


def encode(text: str | Sequence[str], *, length: int | None = None, align: str = "right") -> jax.Array:
    """Token ids of ``text`` (1-D), or of a list of texts padded with PAD into (batch, length).

    ``align="right"`` pads on the left (prompts); ``align="left"`` pads on the right (completions).
    """
    checks.choice("align", align, ("left", "right"))
    index = {c: i for i, c in enumerate(VOCAB)}

    def ids(s: str) -> list[int]:
        bad = sorted(set(s) - set(index))
        if bad:
            raise ValueError(f"text contains characters outside the vocabulary {''.join(VOCAB)!r}: {bad}")
        return [index[c] for c in s]

    if isinstance(text, str):
        return jnp.asarray(ids(text), jnp.int32)
    rows = [ids(s) for s in text]
    width = max(map(len, rows), default=0) if length is None else checks.positive_int("length", length)
    if any(len(r) > width for r in rows):
        raise ValueError(f"length={width} is shorter than the longest text ({max(map(len, rows))} tokens)")
    fill = lambda r: [PAD] * (width - len(r))  # noqa: E731
    padded = [fill(r) + r if align == "right" else r + fill(r) for r in rows]
    return jnp.asarray(np.array(padded, np.int32).reshape(len(rows), width))


def decode(tokens: Any, *, keep_pad: bool = False) -> str | list[str]:
    """Text of a 1-D token array, or the list of texts of a 2-D one (PAD dropped unless ``keep_pad``)."""
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        return "".join(VOCAB[t] if 0 <= t < VOCAB_SIZE else "?" for t in arr if keep_pad or t != PAD)
    return [decode(row, keep_pad=keep_pad) for row in arr]


class Problems(NamedTuple):
    """A batch of addition problems: padded prompt and worked-solution tokens and the operands."""

    prompts: jax.Array      # (batch, prompt_length) int32, left-padded
    completions: jax.Array  # (batch, completion_length) int32, right-padded
    a: jax.Array            # (batch,) int32
    b: jax.Array            # (batch,) int32

    @property
    def tokens(self) -> jax.Array:
        """Prompt and completion side by side: (batch, prompt_length + completion_length)."""
        return jnp.concatenate([self.prompts, self.completions], axis=1)

    @property
    def loss_mask(self) -> jax.Array:
        """True on the completion tokens of :attr:`tokens` (the worked solution up to and with EOS)."""
        return jnp.concatenate([jnp.zeros_like(self.prompts, bool), self.completions != PAD], axis=1)


@functools.partial(jax.jit, static_argnames=("batch_size", "max_digits", "min_digits"))
def sample_problems(key: jax.Array, batch_size: int, max_digits: int, *, min_digits: int = 1) -> Problems:
    """Random problems: for each row n ~ U{min_digits..max_digits}, then a, b ~ U{0..10^n - 1}."""
    batch_size = checks.positive_int("batch_size", batch_size)
    max_digits = _max_digits(max_digits)
    min_digits = checks.positive_int("min_digits", min_digits)
    if min_digits > max_digits:
        raise ValueError(f"min_digits must be <= max_digits, got {min_digits} > {max_digits}")
    key_n, key_a, key_b = jax.random.split(key, 3)
    high = jnp.asarray(_POW10)[jax.random.randint(key_n, (batch_size,), min_digits, max_digits + 1)]
    a = jax.random.randint(key_a, (batch_size,), 0, high)
    b = jax.random.randint(key_b, (batch_size,), 0, high)
    return Problems(format_prompt(a, b, max_digits), worked_solution(a, b, max_digits), a, b)


@functools.partial(jax.jit, static_argnames="max_digits")
def format_prompt(a: jax.Array, b: jax.Array, max_digits: int) -> jax.Array:
    """Left-padded prompt tokens ``a+b=`` (batch, prompt_length(max_digits)) for int arrays a, b.

    Written position by position from the right end: at distance r from it, ``=`` (r = 0), the
    digits of b (1 <= r <= n_b, least significant first), ``+``, the digits of a, then PAD.
    """
    max_digits = _max_digits(max_digits)
    a, b = (jnp.asarray(x, jnp.int32)[..., None] for x in (a, b))
    r = np.arange(prompt_length(max_digits))[::-1]
    b_end = _num_digits(b)
    a_start = b_end + 2
    tokens = jnp.where(r <= b_end, _digit(b, r - 1, max_digits),
                       jnp.where(r == b_end + 1, PLUS, _digit(a, r - a_start, max_digits)))
    tokens = jnp.where(r == 0, EQUALS, tokens)
    return jnp.where(r < a_start + _num_digits(a), tokens, PAD)


@functools.partial(jax.jit, static_argnames="max_digits")
def worked_solution(a: jax.Array, b: jax.Array, max_digits: int) -> jax.Array:
    """Exact completion tokens (steps, ``#``, answer, EOS), right-padded to completion_length.

    Digit step i (i < n, the digits of the longer operand) is ``a_i + b_i + c_i = c_{i+1} s_i ;`` with
    carry c_i = ((a mod 10^i) + (b mod 10^i)) div 10^i and s = a + b; the steps fill the first 9 n
    positions, then ``#``, the digits of s (most significant first), EOS and PAD. The digits are
    computed per place (integer division does not vectorize), then placed by selects, with no compaction.
    """
    max_digits = _max_digits(max_digits)
    a, b = (jnp.asarray(x, jnp.int32)[..., None] for x in (a, b))
    total = a + b
    place, next_place = _POW10[:max_digits], _POW10[1:max_digits + 1]
    carry = lambda p: (a % p + b % p) // p  # noqa: E731
    full = lambda s: jnp.full(a.shape[:-1] + (max_digits,), s, jnp.int32)  # noqa: E731
    steps = jnp.stack([a // place % 10, full(PLUS), b // place % 10, full(PLUS), carry(place), full(EQUALS),
                       carry(next_place), total // place % 10, full(SEP)], axis=-1)
    length = completion_length(max_digits)
    steps = steps.reshape(a.shape[:-1] + (STEP_LENGTH * max_digits,))
    steps = jnp.concatenate([steps, jnp.zeros(a.shape[:-1] + (length - steps.shape[-1],), jnp.int32)], axis=-1)
    offset = np.arange(length) - STEP_LENGTH * jnp.maximum(_num_digits(a), _num_digits(b))  # into "#s."
    answer_digits = _num_digits(total)
    answer = _digit(total, answer_digits - offset, max_digits + 1)
    tail = jnp.where(offset == 0, ANSWER, jnp.where(offset <= answer_digits, answer,
                                                    jnp.where(offset == answer_digits + 1, EOS, PAD)))
    return jnp.where(offset < 0, steps, tail)


@jax.jit
def parse_prompt(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Operands (a, b) of prompts ``[PAD...] a + b =`` (batch,) int32; -1 where malformed.

    Reads up to the first ``=``, so full sequences (prompt then completion) are accepted too.
    """
    a, b, _ = _parse_prompt(checks.int_array("tokens", tokens, ndim=2))
    return a, b


@jax.jit
def extract_answer(tokens: jax.Array) -> jax.Array:
    """The number between the first ``#`` and the next EOS (batch,) int32; -1 if malformed.

    Malformed: no ``#``, no EOS after it, no digits, a non-digit in between, or more than 9 digits.
    Works on completions and on full sequences (a prompt contains no ``#``).
    """
    tokens = checks.int_array("tokens", tokens, ndim=2)
    pos = np.arange(tokens.shape[1])
    marker = _first(tokens == ANSWER)
    end = _first((tokens == EOS) & (pos > marker[:, None]))
    value = _number(tokens, (pos > marker[:, None]) & (pos < end[:, None]), end)
    return jnp.where(end < tokens.shape[1], value, -1)


# ------------------------------------------------------------------------------
def _max_digits(max_digits: int) -> int:
    max_digits = checks.positive_int("max_digits", max_digits)
    if max_digits > MAX_DIGITS:
        raise ValueError(f"max_digits must be in [1, {MAX_DIGITS}] (int32 arithmetic), got {max_digits}")
    return max_digits


def _num_digits(x: jax.Array) -> jax.Array:
    """Decimal digits of non-negative int32 x (1 for 0)."""
    return 1 + jnp.sum(x[..., None] >= _POW10[1:], axis=-1)


def _digit(x: jax.Array, exponent: Any, width: int) -> jax.Array:
    """The digit of x (..., 1), x >= 0, at 10^exponent for exponents in [0, width), else 0.

    One division per row and candidate exponent, then a select per position: integer division does
    not vectorize on CPU, so dividing at every position of a (batch, length) layout is what costs.
    """
    return sum(jnp.where(exponent == e, x // _POW10[e] % 10, 0) for e in range(width))


def _parse_prompt(tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a, b) as in :func:`parse_prompt`, and the index of the first ``=`` (L if none)."""
    pos = np.arange(tokens.shape[1])
    plus = _first(tokens == PLUS)
    equals = _first(tokens == EQUALS)
    a = _number(tokens, (pos < plus[:, None]) & (tokens != PAD), plus)
    b = _number(tokens, (pos > plus[:, None]) & (pos < equals[:, None]), equals)
    ok = (equals < tokens.shape[1]) & (plus < equals) & (a >= 0) & (b >= 0)
    return jnp.where(ok, a, -1), jnp.where(ok, b, -1), equals


def _first(mask: jax.Array) -> jax.Array:
    """Index of the first True along the last axis; its length if there is none (one min reduction)."""
    size = mask.shape[-1]
    return jnp.min(jnp.where(mask, np.arange(size, dtype=np.int32), size), axis=-1)


def _number(tokens: jax.Array, span: jax.Array, end: jax.Array) -> jax.Array:
    """Decimal value of the tokens in ``span`` (batch, L) bool, which must be the positions just before
    ``end`` (batch,): digit at position p weighs 10^(end - 1 - p). -1 unless 1..9 digits, contiguous."""
    exponent = end[:, None] - 1 - np.arange(tokens.shape[1])
    count = jnp.sum(span, axis=-1)
    contiguous = jnp.sum(span & (exponent < count[:, None]), axis=-1) == count
    valid = jnp.all((tokens < 10) | ~span, axis=-1) & (count >= 1) & (count <= _MAX_PARSED_DIGITS) & contiguous
    weight = jnp.asarray(_POW10)[jnp.clip(exponent, 0, _MAX_PARSED_DIGITS - 1)]
    value = jnp.sum(jnp.where(span, tokens * weight, 0), axis=-1)
    return jnp.where(valid, value, -1).astype(jnp.int32)
