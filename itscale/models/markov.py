"""Exact token-level ground truth: n-gram language models (Markov chains of order n - 1).

``NGramLM(log_initial, log_table)`` of order ``n`` over a vocabulary of ``V`` tokens:

    p(x_0 .. x_{L-1}) = p_init(x_0 .. x_{n-2}) * prod_{t >= n-1} table(x_t | x_{t-n+1} .. x_{t-1})

``log_initial`` (V,)*(n-1) is the joint law of the first ``n - 1`` tokens and ``log_table`` (V,)*n the
conditional law of a token given the ``n - 1`` before it (last axis). Shorter prefixes use the
conditionals of ``p_init``, ``p(x_{t+1} | x_0..x_t) = m_{t+2}(x_0..x_{t+1}) / m_{t+1}(x_0..x_t)`` with
``m_k`` its marginal over the first ``k`` tokens. ``MarkovLM(log_initial, log_transition)`` is the order-2
case (a bigram model), whose cache is trivial (``None``).

Both are registered pytrees and give exact answers: ``sequence_log_prob``, the law of all ``V**length``
completions of a prompt (``completion_log_probs``, lexicographic order of :func:`all_sequences`), the
per-position marginals (``marginals``) and ancestral samples (``sample``). Their ``logits_fn(tokens,
cache) -> (logits, cache)`` follows the token-model contract of ``itscale.tokens`` (logits at a fed
position = log-probabilities of the next token), so they plug into ``its.tokens.rollout`` directly.
Inputs are normalised on construction (log-softmax of the joint / of every table row).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from itscale.core import checks
from itscale.core.sharding import write_columns

_MAX_ENUMERATION = 2 ** 22  # largest number of completions enumerated exactly


def all_sequences(vocab_size: int, length: int) -> jax.Array:
    """All ``vocab_size**length`` token sequences, (V**length, length) int32, in lexicographic order.

    Row ``i`` is the base-V expansion of ``i`` (first token most significant), so a sequence ``s`` is at
    row ``np.ravel_multi_index(s, (V,) * length)``.
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    length = checks.positive_int("length", length, minimum=0)
    if vocab_size ** length > _MAX_ENUMERATION:
        raise ValueError(f"vocab_size**length = {vocab_size}**{length} sequences is too many to enumerate "
                         f"exactly (limit {_MAX_ENUMERATION}); use a shorter length or a smaller vocabulary")
    index = jnp.arange(vocab_size ** length, dtype=jnp.int32)
    powers = vocab_size ** jnp.arange(length - 1, -1, -1, dtype=jnp.int32)
    return (index[:, None] // powers) % vocab_size


class NGramCache(NamedTuple):
    """Cache of an :class:`NGramLM`: the tokens fed so far (the context) and per-row fill state.

    history: (batch, max_len) int32, token fed at each slot.
    lengths: (batch,) int32, slots written; the next token of row ``b`` goes to slot ``lengths[b]``
        (a sampler rewinds a row by lowering it).
    start: (batch,) int32, left-padding slots of each row (never part of the context).
    """

    history: jax.Array
    lengths: jax.Array
    start: jax.Array


def _in_vocabulary(name: str, position: int):
    """Decorate a (jitted) method so that concrete token ids in its argument ``name`` (at ``position``
    after ``self``) outside [0, V) raise ``ValueError`` before any compute (traced ones cannot be checked)."""

    def decorate(method):
        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            checks.token_ids(name, kwargs.get(name, args[position] if len(args) > position else None),
                             self.vocab_size)
            return method(self, *args, **kwargs)

        return checked

    return decorate


def _normalize(name: str, log_weights: jax.Array, axes) -> jax.Array:
    """Log-normalise over ``axes``; concrete inputs must be NaN-free with a finite entry per slice."""
    if not isinstance(log_weights, jax.core.Tracer):
        values = np.asarray(log_weights)
        if np.isnan(values).any():
            raise ValueError(f"{name} contains NaN")
        if not np.isfinite(values).any(axis=axes).all():
            raise ValueError(f"{name} has a distribution with no finite log-weight (all -inf); every "
                             "normalised slice needs at least one possible token")
    return _log_normalize(log_weights, axes)


@functools.partial(jax.jit, static_argnums=1)
def _log_normalize(log_weights: jax.Array, axes) -> jax.Array:
    return log_weights - logsumexp(log_weights, axis=axes, keepdims=True)


@jax.tree_util.register_pytree_node_class
class NGramLM:
    """N-gram language model with exact probabilities; see the module docstring.

    Args:
      log_initial: (V,)*(n-1) log-weights of the first n - 1 tokens (normalised jointly).
      log_table: (V,)*n log-weights of a token given the n - 1 previous ones (normalised on the last axis).
    """

    def __init__(self, log_initial, log_table):
        log_table = jnp.asarray(log_table)
        log_initial = jnp.asarray(log_initial)
        if not jnp.issubdtype(log_table.dtype, jnp.floating):
            raise TypeError(f"log_table must be a floating array, got dtype {log_table.dtype}")
        if log_table.ndim < 2 or len(set(log_table.shape)) != 1:
            raise ValueError(f"log_table must have shape (V,)*n with n >= 2 (all axes the vocabulary size), "
                             f"got {log_table.shape}")
        vocab, order = log_table.shape[0], log_table.ndim
        if log_initial.shape != (vocab,) * (order - 1):
            raise ValueError(f"log_initial must have shape {(vocab,) * (order - 1)} (the joint law of the "
                             f"first n - 1 = {order - 1} tokens), got {log_initial.shape}")
        self.log_initial = _normalize("log_initial", log_initial.astype(log_table.dtype),
                                      tuple(range(order - 1)))
        self.log_table = _normalize("log_table", log_table, -1)

    def tree_flatten(self):
        return (self.log_initial, self.log_table), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        model = object.__new__(cls)
        model.log_initial, model.log_table = children
        return model

    @property
    def vocab_size(self) -> int:
        return self.log_table.shape[0]

    @property
    def order(self) -> int:
        """n: a token depends on the n - 1 tokens before it."""
        return self.log_table.ndim

    # ----- exact conditionals -------------------------------------------------------------------
    def conditional_table(self) -> jax.Array:
        """(n - 1, V**(n-1), V) log p(next | context) by level.

        Level ``p < n - 2`` is ``log p(x_{p+1} | x_0..x_p)`` from ``p_init`` (context right-aligned, the
        first n - 2 - p context tokens ignored); level ``n - 2`` is ``log_table``. Impossible contexts get
        all ``-inf`` rows.
        """
        n, vocab = self.order, self.vocab_size
        levels = []
        for p in range(n - 2):
            marginal = logsumexp(self.log_initial, axis=tuple(range(p + 2, n - 1)))  # (V,)*(p+2)
            norm = logsumexp(marginal, axis=-1, keepdims=True)
            cond = jnp.where(jnp.isfinite(norm), marginal - norm, -jnp.inf)
            levels.append(jnp.broadcast_to(cond.reshape((1,) * (n - 2 - p) + cond.shape), (vocab,) * n))
        levels.append(self.log_table)
        return jnp.stack(levels).reshape(n - 1, vocab ** (n - 1), vocab)

    def initial_log_probs(self) -> jax.Array:
        """(V,) log-law of the first token."""
        return logsumexp(self.log_initial, axis=tuple(range(1, self.order - 1)))

    def _log_probs_at(self, history: jax.Array, slots: jax.Array, start: jax.Array) -> jax.Array:
        """log p(next | tokens up to slot) for each of ``slots`` (B, L) of ``history`` (B, T)."""
        n, vocab = self.order, self.vocab_size
        batch, length = slots.shape
        context_slots = jnp.clip(slots[..., None] + jnp.arange(2 - n, 1), 0, history.shape[1] - 1)
        context = jnp.take_along_axis(history, context_slots.reshape(batch, -1), axis=1)
        context = jnp.clip(context.reshape(batch, length, n - 1), 0, vocab - 1)
        flat = jnp.sum(context * vocab ** jnp.arange(n - 2, -1, -1), axis=-1)
        level = jnp.clip(slots - start[:, None], 0, n - 2)
        return self.conditional_table()[level, flat]

    @_in_vocabulary("tokens", 0)
    @jax.jit
    def next_log_probs(self, tokens) -> jax.Array:
        """(batch, L, V): ``log p(x_{t+1} = v | x_0..x_t)`` for every position t of ``tokens`` (batch, L)."""
        tokens = checks.int_array("tokens", tokens, ndim=2).astype(jnp.int32)
        batch, length = tokens.shape
        slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        return self._log_probs_at(tokens, slots, jnp.zeros((batch,), jnp.int32))

    # ----- token-model contract -------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int, *, start=None) -> NGramCache:
        """Empty cache of ``max_len`` slots per row; ``start`` (batch,): left-padding of each row's prompt."""
        batch = checks.positive_int("batch", batch)
        max_len = checks.positive_int("max_len", max_len)
        start = jnp.zeros((batch,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
        if start.shape != (batch,):
            raise ValueError(f"start must have shape ({batch},), got {start.shape}")
        return NGramCache(jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch,), jnp.int32), start)

    @jax.jit
    def forward(self, tokens, cache: NGramCache | None):
        """``(logits, cache)``: log-probs of the next token at each of ``tokens`` (batch, L) fed after the
        cache's context. ``cache=None``: ``tokens`` are the whole sequence from position 0 (no cache kept).
        Writes past ``max_len`` are dropped: size the cache for the whole sequence."""
        tokens = checks.int_array("tokens", tokens, ndim=2).astype(jnp.int32)
        batch, length = tokens.shape
        if cache is None:
            return self.next_log_probs(tokens), None
        if not isinstance(cache, NGramCache):
            raise TypeError("cache must be None or an NGramCache (from init_cache), "
                            f"got {type(cache).__name__}")
        if cache.lengths.shape != (batch,):
            raise ValueError(f"cache holds {cache.lengths.shape[0]} rows but tokens has batch {batch}")
        slots = cache.lengths[:, None] + jnp.arange(length, dtype=jnp.int32)
        history = write_columns(cache.history, slots, tokens)
        logits = self._log_probs_at(history, slots, cache.start)
        return logits, NGramCache(history, cache.lengths + length, cache.start)

    @property
    def logits_fn(self):
        """``logits_fn(tokens, cache) -> (logits, cache)``: :meth:`forward`, cache from :meth:`init_cache`."""
        return self.forward

    # ----- exact laws -----------------------------------------------------------------------------
    def _suffix_log_prob(self, tokens: jax.Array, length: int) -> jax.Array:
        """log p(last ``length`` tokens | the ones before) for ``tokens`` (batch, P + length)."""
        batch, total = tokens.shape
        prompt_len = total - length
        if length == 0:
            return jnp.zeros((batch,), self.log_table.dtype)
        terms = []
        if prompt_len == 0:
            terms.append(self.initial_log_probs()[tokens[:, 0]])
        if total > 1:
            first = max(prompt_len, 1)
            cond = self.next_log_probs(tokens[:, :-1])[:, first - 1:]   # predicts tokens first..total-1
            terms.append(jnp.take_along_axis(cond, tokens[:, first:, None], axis=-1)[..., 0].sum(-1))
        return sum(terms)

    @_in_vocabulary("tokens", 0)
    @jax.jit
    def sequence_log_prob(self, tokens) -> jax.Array:
        """Exact ``log p(tokens)`` of sequences ``tokens`` (..., L) from position 0; shape (...)."""
        tokens = checks.int_array("tokens", tokens).astype(jnp.int32)
        if tokens.ndim == 0:
            raise ValueError("tokens must have at least one dimension (the sequence axis)")
        flat = tokens.reshape(-1, tokens.shape[-1])
        return self._suffix_log_prob(flat, flat.shape[1]).reshape(tokens.shape[:-1])

    @_in_vocabulary("prompt", 0)
    @functools.partial(jax.jit, static_argnames="length")
    def completion_log_probs(self, prompt, length: int) -> jax.Array:
        """Exact log p(completion | prompt) of all ``V**length`` completions, in :func:`all_sequences` order.

        ``prompt``: (P,) or (batch, P) tokens, P >= 0 (P = 0: unconditional). Returns (V**length,) or
        (batch, V**length).
        """
        prompt = checks.int_array("prompt", prompt).astype(jnp.int32)
        if prompt.ndim not in (1, 2):
            raise ValueError(f"prompt must have shape (P,) or (batch, P), got {prompt.shape}")
        completions = all_sequences(self.vocab_size, length)

        def one(row):
            prompts = jnp.broadcast_to(row, (completions.shape[0], row.shape[0]))
            full = jnp.concatenate([prompts, completions], 1)
            return self._suffix_log_prob(full, length)

        return one(prompt) if prompt.ndim == 1 else jax.vmap(one)(prompt)

    @_in_vocabulary("prompt", 0)
    @functools.partial(jax.jit, static_argnames="length")
    def marginals(self, prompt, length: int) -> jax.Array:
        """Exact per-position marginals ``p(x_{P+i} = v | prompt)``: (length, V) or (batch, length, V)."""
        completions = all_sequences(self.vocab_size, length)
        probs = jnp.exp(self.completion_log_probs(prompt, length))
        one_hot = jax.nn.one_hot(completions, self.vocab_size, dtype=probs.dtype)    # (M, length, V)
        return jnp.einsum("...m,mlv->...lv", probs, one_hot)

    @_in_vocabulary("prompt", 3)
    @functools.partial(jax.jit, static_argnames=("num_samples", "length"))
    def sample(self, key, num_samples: int, length: int, prompt=None) -> jax.Array:
        """(num_samples, length) ancestral samples of ``length`` tokens, after ``prompt`` (P,) if given."""
        num_samples = checks.positive_int("num_samples", num_samples)
        length = checks.positive_int("length", length)
        prompt = jnp.zeros((0,), jnp.int32) if prompt is None else checks.int_array("prompt", prompt, ndim=1)
        prompt = prompt.astype(jnp.int32)
        prompt_len = prompt.shape[0]
        history = jnp.zeros((num_samples, prompt_len + length), jnp.int32).at[:, :prompt_len].set(prompt)
        first = prompt_len
        if prompt_len == 0:
            x0 = jax.random.categorical(jax.random.fold_in(key, 0), self.initial_log_probs(),
                                        shape=(num_samples,))
            history, first = history.at[:, 0].set(x0.astype(jnp.int32)), 1
        zeros = jnp.zeros((num_samples,), jnp.int32)

        def draw(history, t):
            log_probs = self._log_probs_at(history, jnp.full((num_samples, 1), t - 1), zeros)[:, 0]
            token = jax.random.categorical(jax.random.fold_in(key, t), log_probs)
            return history.at[:, t].set(token.astype(jnp.int32)), None

        history, _ = jax.lax.scan(draw, history, jnp.arange(first, prompt_len + length))
        return history[:, prompt_len:]


@jax.tree_util.register_pytree_node_class
class MarkovLM(NGramLM):
    """Bigram model ``p(x) = initial(x_0) prod_t transition(x_t | x_{t-1})``, logits ``log_transition[x]``.

    Args:
      log_initial: (V,) log-weights of the first token.
      log_transition: (V, V) log-weights, row ``i`` = next-token law after token ``i``.

    Its cache is trivial: ``logits_fn(tokens, cache)`` returns ``(log_transition[tokens], cache)`` for any
    ``cache`` (``None`` in a rollout), and ``init_cache`` returns ``None``.
    """

    def __init__(self, log_initial, log_transition):
        log_transition = jnp.asarray(log_transition)
        if log_transition.ndim != 2:
            raise ValueError(f"log_transition must have shape (V, V), got {jnp.shape(log_transition)}")
        super().__init__(log_initial, log_transition)

    @property
    def log_transition(self) -> jax.Array:
        return self.log_table

    def init_cache(self, batch: int, max_len: int, *, start=None) -> None:
        """No cache is needed: the next-token law depends on the fed token only."""
        return None

    @jax.jit
    def forward(self, tokens, cache):
        """``(log_transition[tokens], cache)`` for ``tokens`` (batch, L); the cache passes through."""
        tokens = checks.int_array("tokens", tokens, ndim=2)
        return self.log_transition[tokens], cache

    @_in_vocabulary("prompt", 0)
    @functools.partial(jax.jit, static_argnames="length")
    def marginals(self, prompt, length: int) -> jax.Array:
        """Exact marginals by the forward recursion ``pi_{i+1} = pi_i T`` (any length, no enumeration)."""
        prompt = checks.int_array("prompt", prompt).astype(jnp.int32)
        if prompt.ndim not in (1, 2):
            raise ValueError(f"prompt must have shape (P,) or (batch, P), got {prompt.shape}")
        length = checks.positive_int("length", length)
        transition = jnp.exp(self.log_transition)
        if prompt.shape[-1] == 0:
            shape = prompt.shape[:-1] + (self.vocab_size,)
            first = jnp.broadcast_to(jnp.exp(self.initial_log_probs()), shape)
        else:
            first = transition[prompt[..., -1]]

        def advance(pi, _):
            return pi @ transition, pi

        _, marginals = jax.lax.scan(advance, first, None, length=length)
        return jnp.moveaxis(marginals, 0, -2)
