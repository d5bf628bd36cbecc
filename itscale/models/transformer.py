"""Decoder-only transformer (Flax NNX) with rotary positions and a functional KV cache.

Architecture (GPT-2 shaped, Radford et al. 2019, with RoPE instead of learned positions): token
embedding; ``depth`` pre-norm blocks ``x += Attn(Norm(x)); x += MLP(Norm(x))``; final norm; linear
head to ``vocab_size`` logits. Attention is causal multi-head softmax attention,
``softmax(q k^T / sqrt(head_dim) + mask) v``, with rotary position embeddings on q and k
(Su et al. 2021, arXiv 2104.09864): the pair ``(x_i, x_{i + D/2})`` of a head vector at position ``p``
is rotated by the angle ``p * base^(-2i/D)``, so that ``<rope(q, m), rope(k, n)>`` depends on ``m - n``
only.

KV cache (:class:`KVCache`, a pytree). Per layer, K and V buffers of shape
``(batch, heads, max_len, head_dim)`` plus two int32 vectors per batch row:

* ``lengths[b]``: slots written so far; the next token of row ``b`` goes to slot ``lengths[b]``.
  Rows advance independently (a sampler that accepts a different number of tokens per row, e.g.
  speculative decoding, rewinds a row by lowering its length: ``cache._replace(lengths=...)``; slots
  past ``lengths`` are overwritten by later feeds and never attended to).
* ``start[b]``: number of left-padding slots of row ``b``. Batched prompts of different lengths are
  **left-padded**: pass ``start`` (the pad count per row) to :meth:`Transformer.init_cache` and feed the
  padded ``(batch, prompt_len)`` block; slots before ``start[b]`` are never attended to and the RoPE
  position of slot ``s`` is ``s - start[b]``, so every row behaves exactly as if it had no padding and
  all rows' next-token logits are ``logits[:, -1]``.

Attention. New queries attend to the cached slots ``start <= t < lengths`` and causally to the new
keys; the cache is read *before* the new keys are written, and the write is made data-dependent on
that read, so XLA updates the buffers in place inside ``lax.scan`` instead of copying both whole
buffers per layer and step. The masked read covers the whole static buffer (no dynamic shapes, no
retracing), so a decode step costs the network FLOPs of one position plus ``O(max_len * width)``
attention reads. The heads-before-slots layout makes each head's keys one contiguous
``(max_len, head_dim)`` block, which a ``(batch, max_len, heads, head_dim)`` layout would make XLA
transpose every step. (Measurements, and the alternatives tried and not kept: ``docs/performance.md``.)

RoPE angles. The ``(cos, sin)`` of every slot a forward can address (``max_len + L`` with a cache,
``L`` without) form a table computed at trace time (a constant of the compiled program), gathered at
the query positions once per forward for all layers (computed in the graph instead, XLA fuses the
sin/cos into each layer's q/k fusions and re-evaluates them per element).

Pure functions. ``logits_fn(model)`` returns ``logits_fn(tokens, cache) -> (logits, cache)`` with the
parameters closed over (a snapshot) and the model's ``init_cache`` and ``vocab_size`` attached, so the
token samplers find the cache factory on it; ``split_forward(model)`` returns ``(apply, params)`` with
``apply(params, tokens, cache)`` for passing parameters explicitly (``nnx.split`` / ``nnx.merge``:
the merge happens at trace time only, so both are jit/scan friendly and never retrace for new values).
The cached forward needs a cache: ``cache=None`` raises, since a decode step fed without its cache
would see no context. The full causal forward from position 0 (training, the no-cache baseline) is
``model(tokens)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from itscale.core import checks
from itscale.core.sharding import write_columns


class KVCache(NamedTuple):
    """Per-layer key/value buffers and per-row fill state (see the module docstring)."""

    keys: tuple[jax.Array, ...]    # depth x (batch, heads, max_len, head_dim)
    values: tuple[jax.Array, ...]  # depth x (batch, heads, max_len, head_dim)
    lengths: jax.Array             # (batch,) int32: slots written; next write slot
    start: jax.Array               # (batch,) int32: left-padding slots (never attended to)

    @property
    def positions(self) -> jax.Array:
        """RoPE position of the next token of each row: ``lengths - start``."""
        return self.lengths - self.start


def rope_angles(positions: jax.Array, head_dim: int, base: float, dtype: Any
                ) -> tuple[jax.Array, jax.Array]:
    """``(cos, sin)`` of the RoPE angles ``p * base^(-2i/D)``, i < D/2: ``positions.shape + (D/2,)``."""
    half = head_dim // 2
    freq = base ** (-jnp.arange(half, dtype=dtype) / half)
    angle = positions.astype(dtype)[..., None] * freq
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE: ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)`` on the last axis of x."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding of ``x`` (..., L, heads, D) at integer ``positions`` (..., L).

    Su et al. 2021, arXiv 2104.09864, eq. 34 (rotate-half form).
    """
    cos, sin = rope_angles(positions, x.shape[-1], base, x.dtype)
    return apply_rope(x, cos[..., None, :], sin[..., None, :])


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array, start: jax.Array,
            cached: tuple[jax.Array, jax.Array, jax.Array] | None) -> jax.Array:
    """Causal softmax attention of the new queries q (B, H, L, D) over cached and new keys.

    ``k, v`` (B, H, L, D) are the new tokens' keys/values in slots ``query_slots`` (B, L);
    ``cached = (K, V, lengths)`` holds the keys/values (B, H, T, D) already in the cache (slots below
    ``lengths``), read before this step's write so that the write stays in place. A key in slot ``t``
    is visible to a query in slot ``s`` of row ``b`` iff ``start[b] <= t <= s``. Queries with nothing
    visible (left padding) get a finite average instead of NaN.
    """
    low = jnp.finfo(jnp.result_type(q, k)).min
    new_visible = ((query_slots[:, None, :] <= query_slots[:, :, None])
                   & (query_slots[:, None, :] >= start[:, None, None]))             # (B, L, L)
    scores = jnp.where(new_visible[:, None], jnp.einsum("bhld,bhmd->bhlm", q, k), low)
    if cached is not None:
        cache_k, cache_v, lengths = cached
        slots = jnp.arange(cache_k.shape[2])
        old_visible = (slots >= start[:, None]) & (slots < lengths[:, None])      # (B, T)
        old_scores = jnp.einsum("bhld,bhtd->bhlt", q, cache_k.astype(q.dtype))
        old_scores = jnp.where(old_visible[:, None, None], old_scores, low)
        scores = jnp.concatenate([old_scores, scores], axis=-1)
    weights = jax.nn.softmax(scores, axis=-1)
    if cached is None:
        return jnp.einsum("bhlm,bhmd->bhld", weights, v)
    num_old = cache_k.shape[2]
    return (jnp.einsum("bhlt,bhtd->bhld", weights[..., :num_old], cache_v.astype(q.dtype))
            + jnp.einsum("bhlm,bhmd->bhld", weights[..., num_old:], v))


def _heads_first(x: jax.Array) -> jax.Array:
    """(B, L, H, D) <-> (B, H, L, D)."""
    return x.transpose(0, 2, 1, 3)


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + Attn(Norm(x))`` then ``x + MLP(Norm(x))``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, norm: str, *,
                 dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        norm_cls = {"layernorm": nnx.LayerNorm, "rmsnorm": nnx.RMSNorm}[norm]
        dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.attn_norm = norm_cls(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = dense(width, 3 * width)
        self.out = dense(width, width)
        self.mlp_norm = norm_cls(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp_in = dense(width, mlp_ratio * width)
        self.mlp_out = dense(mlp_ratio * width, width)

    def __call__(self, x: jax.Array, rotation: tuple[jax.Array, jax.Array], query_slots: jax.Array,
                 start: jax.Array, kv: tuple[jax.Array, jax.Array] | None):
        """x (B, L, W); rotation: RoPE (cos, sin) (B, L, D/2); query_slots (B, L); kv: (K, V) or None."""
        batch, length, width = x.shape
        qkv = self.qkv(self.attn_norm(x)).reshape(batch, length, 3, self.num_heads, self.head_dim)
        cos, sin = (r[:, :, None, None, :] for r in rotation)
        qk = apply_rope(qkv[:, :, :2], cos.astype(qkv.dtype), sin.astype(qkv.dtype))     # q and k at once
        q, k, v = qk[:, :, 0] * (self.head_dim ** -0.5), qk[:, :, 1], qkv[:, :, 2]
        cached = None if kv is None else (*kv, query_slots[:, 0])
        attended = _attend(_heads_first(q), _heads_first(k), _heads_first(v), query_slots, start, cached)
        if kv is not None:
            # Make the write depend on the reads of the old buffers (x * 0 is not folded for floats):
            # XLA then orders it after them and updates the buffers in place. Without this
            # dependency it copies both whole buffers every step.
            after_reads = (attended[:, :1, :1, :1] * 0).astype(k.dtype)          # (B, 1, 1, 1)
            kv = tuple(write_columns(buffer, query_slots, _heads_first(new + after_reads), axis=2)
                       for buffer, new in zip(kv, (k, v)))
        x = x + self.out(_heads_first(attended).reshape(batch, length, width))
        x = x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))
        return x, kv


class Transformer(nnx.Module):
    """Decoder-only causal transformer with RoPE and a functional KV cache.

    Args:
      vocab_size: number of token ids.
      width: model width (``num_heads`` must divide it; head_dim = width / num_heads must be even).
      depth: number of blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / width.
      max_len: default cache length of :meth:`init_cache`.
      norm: ``"layernorm"`` or ``"rmsnorm"`` (pre-norm).
      rope_base: RoPE frequency base.
      dtype: computation dtype (None: follow the parameters).
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, vocab_size: int, *, width: int = 256, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: int = 4, max_len: int = 512, norm: str = "layernorm",
                 rope_base: float = 10000.0, dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.vocab_size = checks.positive_int("vocab_size", vocab_size)
        width = checks.positive_int("width", width)
        checks.positive_int("depth", depth)
        num_heads = checks.positive_int("num_heads", num_heads)
        checks.positive_int("mlp_ratio", mlp_ratio)
        self.max_len = checks.positive_int("max_len", max_len)
        checks.choice("norm", norm, ("layernorm", "rmsnorm"))
        rope_base = checks.in_range("rope_base", rope_base, 1.0, float("inf"), inclusive=False)
        if width % num_heads or (width // num_heads) % 2:
            raise ValueError(f"width must be a multiple of num_heads with an even head_dim "
                             f"(width / num_heads), got width={width}, num_heads={num_heads}")
        self.num_heads, self.head_dim, self.rope_base = num_heads, width // num_heads, rope_base
        self.param_dtype = param_dtype
        self.embed = nnx.Embed(vocab_size, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([
            Block(width, num_heads, mlp_ratio, norm, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs) for _ in range(depth)])
        norm_cls = {"layernorm": nnx.LayerNorm, "rmsnorm": nnx.RMSNorm}[norm]
        self.final_norm = norm_cls(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.head = nnx.Linear(width, vocab_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def init_cache(self, batch: int, max_len: int | None = None, dtype: Any = None, *,
                   start: jax.Array | None = None) -> KVCache:
        """Empty cache for ``batch`` rows of ``max_len`` slots (default ``self.max_len``).

        ``start`` (batch,) int: left-padding length of each row's prompt (default 0); the padded
        prompt block is then fed as usual and its first ``start[b]`` tokens are ignored.
        """
        batch = checks.positive_int("batch", batch)
        max_len = checks.positive_int("max_len", self.max_len if max_len is None else max_len)
        dtype = self.param_dtype if dtype is None else dtype
        shape = (batch, self.num_heads, max_len, self.head_dim)
        start = jnp.zeros((batch,), jnp.int32) if start is None else _row_vector("start", start, batch)
        keys = tuple(jnp.zeros(shape, dtype) for _ in self.blocks)
        values = tuple(jnp.zeros(shape, dtype) for _ in self.blocks)
        return KVCache(keys, values, jnp.zeros((batch,), jnp.int32), start)

    def forward(self, tokens: jax.Array, cache: KVCache | None) -> tuple[jax.Array, KVCache | None]:
        """Logits (batch, L, vocab) of ``tokens`` (batch, L) fed at the cache's current slots.

        Prefill (L = prompt length) and decode steps (L = 1) are the same call; the returned cache
        has ``lengths + L``. Size the cache for the whole run: positions fed past its ``max_len`` slots
        are dropped, and a row fed again once ``lengths >= max_len`` gets RoPE angles clipped to the
        table (meaningless logits). ``cache=None`` raises ``TypeError``: use ``model(tokens)`` for a full
        forward from position 0.
        """
        tokens = checks.int_array("tokens", tokens, ndim=2)
        batch, length = tokens.shape
        if not isinstance(cache, KVCache):
            raise TypeError("cache must be a KVCache from model.init_cache(batch, max_len) (tokens fed without "
                            f"their cache would be decoded without context), got {type(cache).__name__}; pass "
                            "init_cache=model.init_cache to the sampler, or call model(tokens) for a full "
                            "forward from position 0")
        if cache.lengths.shape != (batch,):
            raise ValueError(f"cache holds {cache.lengths.shape[0]} rows but tokens has batch {batch}")
        query_slots = cache.lengths[:, None] + jnp.arange(length, dtype=jnp.int32)
        logits, kv = self._run(tokens, query_slots, cache.start, zip(cache.keys, cache.values),
                               num_slots=cache.keys[0].shape[2] + length)
        keys, values = zip(*kv)
        return logits, KVCache(keys, values, cache.lengths + length, cache.start)

    def __call__(self, tokens: jax.Array, *, start: jax.Array | None = None) -> jax.Array:
        """Full causal forward without cache: logits (batch, L, vocab).

        ``start`` (batch,) int: left-padding length per row (those tokens are ignored), default 0.
        """
        tokens = checks.int_array("tokens", tokens, ndim=2)
        batch, length = tokens.shape
        start = jnp.zeros((batch,), jnp.int32) if start is None else _row_vector("start", start, batch)
        query_slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        logits, _ = self._run(tokens, query_slots, start, [None] * len(self.blocks), num_slots=length)
        return logits

    def _run(self, tokens, query_slots, start, kvs, *, num_slots: int):
        x = self.embed(tokens)
        positions = jnp.maximum(query_slots - start[:, None], 0)
        angle_dtype = jnp.promote_types(x.dtype, jnp.float32)
        with jax.ensure_compile_time_eval():        # (cos, sin) of every slot: a constant of the program
            table = rope_angles(jnp.arange(num_slots), self.head_dim, self.rope_base, angle_dtype)
        rotation = tuple(jnp.take(t, positions, axis=0, mode="clip") for t in table)      # once for all layers
        new_kvs = []
        for block, kv in zip(self.blocks, kvs):
            x, kv = block(x, rotation, query_slots, start, kv)
            new_kvs.append(kv)
        return self.head(self.final_norm(x)), new_kvs


def _row_vector(name: str, value: Any, batch: int) -> jax.Array:
    value = checks.int_array(name, value, ndim=1)
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one entry per batch row), got {value.shape}")
    return value.astype(jnp.int32)


LogitsFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def split_forward(model: Transformer) -> tuple[Callable[..., tuple[jax.Array, Any]], nnx.State]:
    """``(apply, params)`` with ``apply(params, tokens, cache) -> (logits, cache)`` pure.

    ``nnx.split`` the module once; ``apply`` merges the graph with the given state at trace time, so
    it can be jitted, scanned and differentiated with respect to ``params``.
    """
    graphdef, params = nnx.split(model)

    def apply(params: nnx.State, tokens: jax.Array, cache: KVCache | None):
        return nnx.merge(graphdef, params).forward(tokens, cache)

    return apply, params


def logits_fn(model: Transformer) -> LogitsFn:
    """Pure ``logits_fn(tokens, cache) -> (logits, cache)`` with a snapshot of the parameters closed over,
    carrying the model's ``init_cache`` and ``vocab_size`` (found there by the token samplers).

    Under ``jit`` the closed-over parameters become compile-time constants: convenient for the small
    models here; for large ones pass them as arguments with :func:`split_forward`.
    """
    apply, params = split_forward(model)
    fn = functools.partial(apply, params)
    fn.init_cache, fn.vocab_size = model.init_cache, model.vocab_size
    return fn


def next_token_loss(model: Transformer, tokens: jax.Array, mask: jax.Array | None = None, *,
                    start: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy of ``tokens[:, 1:]`` given their prefixes: ``-mean log p(x_{t+1} | x_{<=t})``.

    ``mask`` (batch, L) bool/float selects the predicted positions that count (e.g. the completion);
    entry ``t`` weighs the prediction of ``tokens[:, t]``, so ``mask[:, 0]`` is ignored.
    """
    logits = model(tokens, start=start)[:, :-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    nll = -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    weight = jnp.ones_like(nll) if mask is None else jnp.asarray(mask[:, 1:], nll.dtype)
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1)
