"""How a token sampler talks to a model: ``logits_fn(tokens, cache) -> (logits, cache)`` and its cache.

``tokens`` (batch, L) int32 are new tokens fed at the cache's position; ``logits`` (batch, L, V) at each
fed position are the (unnormalised) log-probabilities of the token after it. The call is wrapped with
``counted(..., cost=token_positions)`` (NFE = batch x L per call).

Cache. ``init_cache(batch, max_len, start=start)`` builds an empty cache for sequences of ``max_len``
slots whose first ``start[b]`` slots are left padding (the signature of
``its.models.transformer.Transformer.init_cache`` and ``its.models.NGramLM.init_cache``); the samplers
size it for the whole run, so it never overflows. When it is not passed, it is found on the model: an
``init_cache`` attribute of ``logits_fn`` itself (``its.models.transformer.logits_fn(model)``) or of the
object a bound method belongs to (``lm.logits_fn`` of a ``MarkovLM`` / ``NGramLM``). A model without
one gets ``cache=None`` and must need no context beyond the fed tokens (``Transformer.forward`` refuses
``cache=None``, so a transformer never decodes without its context). ``vocab_size`` is found the same
way; with it, concrete prompt ids outside [0, V) raise before the run. Ids outside the vocabulary fed
inside the loop (where nothing could check them) make that row's logits NaN: the row is counted in
``stats.nonfinite`` and becomes impossible (pad tokens, log-probability -inf), never a silent clip.

Rewind. Parallel decoders feed tokens they may take back (Jacobi guesses, rejected speculative drafts)
and then rewind the cache row by row. The default rule lowers a ``lengths`` (batch,) field of a
NamedTuple cache (``KVCache``, ``NGramCache``) and leaves ``None`` alone; pass ``rewind=fn(cache,
num_positions) -> cache`` for other caches. Slots past ``lengths`` are overwritten by later feeds.

``max_len`` (optional, static): the longest sequence (prompt + new tokens) the model accepts; a longer
request raises ``ValueError`` at trace time, before any compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.weights import ModelProxy
from itscale.tokens import sampling, sequences


def rewind_lengths(cache: Any, num_positions: jax.Array) -> Any:
    """Default rewind: ``cache._replace(lengths=cache.lengths - num_positions)``; ``None`` stays ``None``."""
    if cache is None:
        return None
    if not (hasattr(cache, "lengths") and hasattr(cache, "_replace")):
        raise TypeError(f"cannot rewind a cache of type {type(cache).__name__}: the default rule needs a "
                        "NamedTuple with a per-row `lengths` field; pass rewind=fn(cache, num_positions)")
    return cache._replace(lengths=cache.lengths - num_positions.astype(cache.lengths.dtype))


class TokenModel(NamedTuple):
    """A counted ``logits_fn`` with its cache factory, rewind rule, length limit and vocabulary size."""

    logits_fn: Callable
    init_cache: Callable | None
    rewind_fn: Callable
    max_len: int | None
    vocab_size: int | None = None

    def new_cache(self, batch: int, num_slots: int, start: jax.Array) -> Any:
        return None if self.init_cache is None else self.init_cache(batch, num_slots, start=start)

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        if self.max_len is not None and prompt_len + max_new_tokens > self.max_len:
            raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} = "
                             f"{prompt_len + max_new_tokens} exceeds the model's max_len={self.max_len}; use "
                             "shorter prompts or fewer new tokens")

    def check_prompts(self, x) -> None:
        """Concrete prompt ids (``x`` = prompts or ``(prompts, lengths)``) must lie in [0, vocab_size)."""
        if self.vocab_size is not None and x is not None:
            checks.token_ids("prompts", sequences.split_prompts(x)[0], self.vocab_size, "the model's vocabulary")

    def __call__(self, tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        out = self.logits_fn(tokens, cache)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"logits_fn must return a pair (logits, cache), got {type(out).__name__}"
                            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                            + "; a model without cache returns (logits, None)")
        logits, cache = out
        if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != tokens.shape:
            raise ValueError(f"logits_fn fed tokens of shape {tokens.shape} returned logits of shape "
                             f"{jnp.shape(logits)}; expected (batch, L, vocab) = {tokens.shape + ('V',)}")
        if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
            raise TypeError(f"logits_fn must return floating logits, got dtype {jnp.result_type(logits)}")
        outside = jnp.any((tokens < 0) | (tokens >= jnp.shape(logits)[-1]), axis=1)     # per row: no collective
        return jnp.where(outside[:, None, None], jnp.nan, logits), cache

    def rewind(self, cache: Any, num_positions: jax.Array) -> Any:
        return self.rewind_fn(cache, num_positions)


def validate_tokens(*models: TokenModel) -> Callable[[Any, Any], None]:
    """``Sampler.validate`` of a token sampler: decoding params in range, prompt ids in every model's
    vocabulary."""

    def check(x, params) -> None:
        sampling.check_params(x, params)
        for model in models:
            model.check_prompts(x)

    return check


def found_on_model(logits_fn: Callable, attribute: str) -> Any:
    """``logits_fn.<attribute>``, else that of the object ``logits_fn`` is a bound method of, else None."""
    for owner in (logits_fn, getattr(logits_fn, "__self__", None)):
        value = getattr(owner, attribute, None)
        if value is not None:
            return value
    return None


def token_model(name: str, logits_fn: Callable, init_cache: Callable | None = None,
                rewind: Callable | None = None, max_len: int | None = None) -> TokenModel:
    """Check the arguments, find the cache factory and vocabulary size on the model when not given, and
    wrap ``logits_fn`` with ``counted(..., cost=token_positions)``."""
    if not callable(logits_fn):
        raise TypeError(f"{name} must be a callable logits_fn(tokens, cache) -> (logits, cache), "
                        f"got {type(logits_fn).__name__}")
    if init_cache is None:
        init_cache = found_on_model(logits_fn, "init_cache")
    for arg, value in (("init_cache", init_cache), ("rewind", rewind)):
        if value is not None and not callable(value):
            raise TypeError(f"{arg} must be None or a callable, got {type(value).__name__}")
    if max_len is not None:
        max_len = checks.positive_int("max_len", max_len)
    vocab_size = found_on_model(logits_fn, "vocab_size")
    vocab_size = vocab_size if isinstance(vocab_size, int) else None
    if isinstance(logits_fn, ModelProxy) and hasattr(logits_fn, "forward"):
        logits_fn = logits_fn.forward               # an NNX token model: forward(tokens, cache)
    return TokenModel(counting.counted(logits_fn, cost=counting.token_positions), init_cache,
                      rewind_lengths if rewind is None else rewind, max_len, vocab_size)
