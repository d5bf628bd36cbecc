"""Decoding controls (temperature, top-k, top-p, min-p) and Gumbel-max choice of a token.

The sampling law of a logits row is built in the order of Hugging Face's logits warpers: temperature
``softmax(l / T)``, then top-k (the k most probable tokens), then top-p / nucleus (Holtzman et al. 2020,
arXiv 1904.09751: the most probable tokens until their mass reaches p, the one crossing p included),
then min-p (Nguyen et al. 2024, arXiv 2407.01082: tokens with ``p >= min_p * p_max``); each stage
renormalises. Tokens tied with the last kept one are kept (order independent), and at least the most
probable token always survives, so a truncation is never empty: ``top_p <= 0`` or ``min_p >= 1`` keep
only the top token(s). ``temperature <= 0`` means greedy (all mass on the first argmax).

A token is drawn by the Gumbel-max trick, ``argmax(log q + g)`` with ``g`` standard Gumbel noise
(Gumbel 1954; Maddison et al. 2014, arXiv 1411.0030), so a decoder that fixes ``g`` per position
(``itscale.tokens.noise``) makes sampling a deterministic function of the logits. Safe behaviour: NaN
logits count as ``-inf``, ``+inf`` as the largest finite value; a row without any possible token is
"impossible": its token is ``pad_id`` with log-probability ``-inf`` (never NaN), which ``its.run``
reports in ``stats.nonfinite``.

Static choices (``top_k``, which stages exist, ``eos_id``, ``pad_id``) live in :class:`Decoding`; the
values of ``temperature``, ``top_p`` and ``min_p`` are traced in the sampler's ``params`` dict, so
changing them never recompiles.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from itscale.core import checks


class Decoding(NamedTuple):
    """Static decoding choices shared by the token samplers (see the module docstring)."""

    top_k: int | None = None
    top_p: bool = False
    min_p: bool = False
    eos_id: int | None = None
    pad_id: int = 0

    def check_vocab(self, vocab_size: int) -> None:
        """Trace-time check of the token ids against the model's vocabulary size."""
        for name, value in (("eos_id", self.eos_id), ("pad_id", self.pad_id)):
            if value is not None and value >= vocab_size:
                raise ValueError(f"{name}={value} is not a token of the model's vocabulary of size "
                                 f"{vocab_size}; use an id in [0, {vocab_size})")


def decoding(*, temperature=1.0, top_k=None, top_p=None, min_p=None, eos_id=None,
             pad_id=0) -> tuple[Decoding, dict]:
    """Check the decoding arguments; return the static :class:`Decoding` and the default params dict."""
    params = {"temperature": checks.in_range("temperature", temperature, 0.0, math.inf)}
    if top_k is not None:
        top_k = checks.positive_int("top_k", top_k)
    if top_p is not None:
        params["top_p"] = checks.in_range("top_p", top_p, 0.0, 1.0)
    if min_p is not None:
        params["min_p"] = checks.in_range("min_p", min_p, 0.0, 1.0)
    eos_id = None if eos_id is None else check_token_id("eos_id", eos_id)
    pad_id = check_token_id("pad_id", pad_id)
    return Decoding(top_k, top_p is not None, min_p is not None, eos_id, pad_id), params


check_params = checks.param_ranges(temperature=(0.0, math.inf), top_p=(0.0, 1.0), min_p=(0.0, 1.0))
"""``Sampler.validate`` of the decoding params: temperature >= 0, top_p and min_p in [0, 1]."""


def check_token_id(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a token id (a Python int >= 0), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a token id >= 0, got {value}")
    return int(value)


def float_dtype(logits_dtype):
    """Dtype of the log-probabilities computed from logits of ``logits_dtype`` (at least float32)."""
    return jnp.promote_types(logits_dtype, jnp.float32)


def _sanitize(logits: jax.Array) -> jax.Array:
    x = logits.astype(float_dtype(logits.dtype))
    return jnp.where(jnp.isnan(x), -jnp.inf, jnp.minimum(x, jnp.finfo(x.dtype).max))


def log_normalize(x: jax.Array) -> jax.Array:
    """``x - logsumexp(x)`` on the last axis; an all ``-inf`` row stays all ``-inf`` (no NaN)."""
    top = jnp.max(x, axis=-1, keepdims=True)
    finite = jnp.isfinite(top)
    shifted = x - jnp.where(finite, top, 0)
    return jnp.where(finite, shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)), -jnp.inf)


def model_log_probs(logits: jax.Array) -> jax.Array:
    """Log-probabilities of the model itself (temperature 1, no truncation)."""
    return log_normalize(_sanitize(logits))


def _nucleus(log_q: jax.Array, top_p: jax.Array) -> jax.Array:
    probs = jnp.exp(log_q)
    ranked = jnp.flip(jnp.sort(probs, axis=-1), axis=-1)
    mass = jnp.cumsum(ranked, axis=-1)
    mass_before = jnp.concatenate([jnp.zeros_like(ranked[..., :1]), mass[..., :-1]], axis=-1)
    keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(ranked, keep - 1, axis=-1)
    return jnp.where(probs >= threshold, log_q, -jnp.inf)


def sampling_log_probs(logits: jax.Array, params: dict, decoding: Decoding) -> jax.Array:
    """Log-probabilities of the sampling law (``-inf`` outside the kept tokens), last axis = vocabulary."""
    x = _sanitize(logits)
    temperature = jnp.asarray(params["temperature"], x.dtype)
    greedy = temperature <= 0
    log_q = log_normalize(x / jnp.where(greedy, 1, temperature))
    if decoding.top_k is not None:
        k = min(decoding.top_k, x.shape[-1])
        kth = lax.top_k(log_q, k)[0][..., -1:]
        log_q = log_normalize(jnp.where(log_q >= kth, log_q, -jnp.inf))
    if decoding.top_p:
        log_q = log_normalize(_nucleus(log_q, jnp.asarray(params["top_p"], x.dtype)))
    if decoding.min_p:
        top = jnp.max(log_q, axis=-1, keepdims=True)
        floor = top + jnp.log(jnp.maximum(jnp.asarray(params["min_p"], x.dtype), 0))
        log_q = log_normalize(jnp.where((log_q >= floor) | (log_q == top), log_q, -jnp.inf))
    first_best = jnp.arange(x.shape[-1]) == first_argmax(x)[..., None]
    one_hot = jnp.where(first_best & jnp.isfinite(jnp.max(x, axis=-1, keepdims=True)), 0.0, -jnp.inf)
    return jnp.where(greedy, one_hot.astype(x.dtype), log_q)


def truncated_log_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None) -> jax.Array:
    """The sampling law of ``logits`` under the given controls, as log-probabilities (for analysis)."""
    dec, params = decoding(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return sampling_log_probs(jnp.asarray(logits), params, dec)


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` for x without NaN (the first maximal entry), as a max then a min of
    ``where(x == max, index, V)``: two one-operand reductions, much faster on CPU than the
    two-operand reduction ``argmax`` lowers to."""
    size = x.shape[-1]
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(x == top, jnp.arange(size, dtype=jnp.int32), size), axis=-1)
    return jnp.minimum(index, size - 1)


def gumbel_max(log_q: jax.Array, gumbel: jax.Array, pad_id: int) -> jax.Array:
    """``argmax(log q + g)`` (a draw from q when g is standard Gumbel); ``pad_id`` for impossible rows."""
    token = first_argmax(log_q + gumbel.astype(log_q.dtype))
    possible = jnp.isfinite(jnp.max(log_q, axis=-1))
    return jnp.where(possible, token, pad_id).astype(jnp.int32)


def pick(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log_probs[..., tokens]``: the log-probability of each chosen token."""
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
