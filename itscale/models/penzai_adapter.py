"""``from_penzai(lm, *, max_len)``: a penzai transformer LM as an itscale token model.

A pretrained penzai checkpoint (Gemma, Llama, Mistral, GPT-NeoX variants of
``penzai.models.transformer``) then decodes with every token sampler::

    lm = ...  # a penzai TransformerLM, e.g. variants.gemma.gemma_from_pretrained_checkpoint(...)
    model = its.models.from_penzai(lm, max_len=1024)
    out = its.run(its.tokens.rollout(model, temperature=0.7), key, prompts, num_steps=64).output

(``prompts`` (batch, P) int token ids, or ``(prompts, lengths)`` for ragged prompts; beam search, token
SMC, Jacobi and speculative decoding take ``model`` the same way.) Install penzai with
``pip install "itscale[penzai]"``; itscale itself never imports penzai until ``from_penzai`` is called.

What it returns. ``its.models.bind(apply_fn, weights, init_cache=..., vocab_size=..., max_len=max_len)``:

* ``weights`` -- the LM's parameters as a dict ``{penzai parameter label: jax.Array}`` (named arrays
  unwrapped, their axis names kept in ``apply_fn``), so the samplers pass them to their compiled loop
  as traced arguments: two LMs of the same architecture give equal ``apply_fn`` / ``init_cache`` and
  weight pytrees of the same structure, and sampling with new weights never recompiles.
* ``apply_fn(weights, tokens, cache) -> (logits, cache)`` -- the token-model protocol of
  :mod:`itscale.tokens.model`: ``tokens`` (batch, L) int fed at each row's cache position, ``logits``
  (batch, L, V) the next-token logits at each fed position. A :class:`PenzaiForward`, which hashes and
  compares by the model's static structure (architecture, non-parameter constants, parameter axis names).
* ``init_cache(batch, max_len, *, start=None)`` -- an empty :class:`PenzaiCache`.

KV cache. penzai's own sampling mode (``sampling_mode.KVCachingTransformerLM``) keeps one scalar
``cache_end_index`` for the whole batch and infers left padding from a pad token id, so rows cannot
advance independently (speculative decoding, Jacobi and finished rows rewind row by row) and a real
token equal to the pad id would be taken for padding. The adapter therefore keeps its own cache around
penzai's layers: every ``pz.nn.Attention`` of the LM is swapped (at trace time) for a caching attention
that reuses the layer's own sublayers (projections, RoPE, causal / sliding-window mask, soft caps,
output projection) and only changes where keys and values come from:

* :class:`PenzaiCache` holds, per attention layer, key and value buffers of shape
  ``(batch, *layer-stack axes, *head axes, max_len, projection)`` (activation dtype) and two (batch,)
  int32 vectors: ``lengths`` (slots written; the next token of row ``b`` goes to slot ``lengths[b]``)
  and ``start`` (row ``b``'s left padding). The default rewind rule ``lengths -= n`` works: slots past
  ``lengths`` are never attended to and are overwritten by later feeds.
* A token in slot ``s`` of row ``b`` has position ``s - start[b]`` (RoPE and causal mask), so a left-padded
  row behaves exactly as without padding; padding slots get penzai's pad position -1 and are never
  attended to. Keys and values of the fed tokens are written per row at ``lengths[b] + i`` (writes past
  the buffer are dropped: size the cache for the whole run, as the samplers do), then the queries
  attend over the whole buffer with penzai's mask layer fed the per-slot positions (a decode step
  costs one position's network FLOPs plus ``O(max_len)`` attention reads; no dynamic shapes).

Requirements on ``lm``: a ``penzai.models.transformer.model_parts.TransformerLM`` (not its sampling
mode) with the conventions of penzai's transformer variants -- a ``"seq"`` token axis, a
``"vocabulary"`` logits axis, ``"token_positions"`` side input, attention layers ``pz.nn.Attention``
whose masks are ``ApplyCausalAttentionMask`` / ``ApplyCausalSlidingWindowAttentionMask`` and whose
keys/values carry the metadata's head axes and ``"projection"``; no axis of its own may be named
``"batch"`` (the adapter's batch axis). Layer stacks (``use_layer_stack=True``), grouped/multi-query
attention, sliding windows, soft caps, tied embeddings and frozen parameters (``pz.freeze_params``) are
supported; state variables in the LM are not. Non-parameter arrays of the model (epsilons, scales) are
compile-time constants.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.models.bound import Bound, bind

BATCH_AXIS = "batch"                      # the named batch axis of the penzai call
SEQ_AXIS = "seq"                          # penzai's token axis
KV_POSITIONS = "kv_token_positions"       # side input: position of every cache slot (-1: never attended)
WRITE_INDEX = "itscale_cache_write_index"  # side input: first slot written by this call, per row
_CACHE_LABEL = "itscale/kv_cache_{}"


class PenzaiCache(NamedTuple):
    """Per-attention-layer key/value buffers and per-row fill state (see the module docstring)."""

    keys: tuple[jax.Array, ...]    # per layer: (batch, *stack axes, *head axes, max_len, projection)
    values: tuple[jax.Array, ...]
    lengths: jax.Array             # (batch,) int32: slots written; next write slot
    start: jax.Array               # (batch,) int32: left-padding slots (never attended to)


def _penzai():
    try:
        import penzai  # noqa: F401
        from penzai import pz
    except ImportError as error:          # pragma: no cover - depends on the environment
        raise ImportError("its.models.from_penzai needs penzai: pip install 'itscale[penzai]' "
                          "(or pip install penzai)") from error
    return pz


@functools.cache
def _caching_attention_class():
    """The penzai layer that replaces ``pz.nn.Attention`` (defined on first use: penzai is optional)."""
    pz = _penzai()

    @pz.pytree_dataclass
    class RowCachingAttention(pz.nn.Layer):
        """``pz.nn.Attention`` with a per-row KV cache held in a state variable ``(keys, values)``."""

        input_to_query: pz.nn.Layer
        input_to_key: pz.nn.Layer
        input_to_value: pz.nn.Layer
        query_key_to_attn: pz.nn.Layer
        attn_value_to_output: pz.nn.Layer
        kv_cache: Any

        def __call__(self, x, /, **side_inputs):
            write = side_inputs[WRITE_INDEX]
            query = self.input_to_query(x, **side_inputs)
            key = self.input_to_key(x, **side_inputs)
            value = self.input_to_value(x, **side_inputs)
            old_keys, old_values = self.kv_cache.value
            keys, values = (pz.nx.nmap(_write_slots)(buffer.untag(SEQ_AXIS), new.untag(SEQ_AXIS), write)
                            .tag(SEQ_AXIS) for buffer, new in ((old_keys, key), (old_values, value)))
            self.kv_cache.value = (keys, values)
            attn = self.query_key_to_attn((query, keys), **side_inputs)
            return self.attn_value_to_output((attn, values), **side_inputs)

    return RowCachingAttention


def _write_slots(buffer: jax.Array, new: jax.Array, first: jax.Array) -> jax.Array:
    """``buffer`` (T,) with ``new`` (L,) written at slots ``first ... first + L - 1`` (past T: dropped)."""
    return buffer.at[first + jnp.arange(new.shape[0])].set(new.astype(buffer.dtype), mode="drop")


@dataclasses.dataclass(frozen=True)
class _LeafSpec:
    """How to rebuild one parameter leaf from its raw array: named axes (None: a plain array)."""

    names: tuple | None
    num_positional: int = 0


@dataclasses.dataclass(frozen=True)
class _CacheSpec:
    """One attention layer's cache: state label, axis names/sizes after batch, layer-stack metadata."""

    label: str
    axes: tuple[tuple[Any, int], ...]            # (*stack axes, *head axes, ("projection", size))
    stack_axes: tuple[Any, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class PenzaiInitCache:
    """``init_cache(batch, max_len, *, start=None) -> PenzaiCache`` of a penzai LM (static layout only)."""

    specs: tuple[_CacheSpec, ...]
    dtype: Any

    def _key(self):
        return self.specs, jnp.dtype(self.dtype).name

    def __eq__(self, other):
        return isinstance(other, PenzaiInitCache) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, batch: int, max_len: int, *, start: jax.Array | None = None) -> PenzaiCache:
        batch = checks.positive_int("batch", batch)
        max_len = checks.positive_int("max_len", max_len)
        if start is None:
            start = jnp.zeros((batch,), jnp.int32)
        else:
            start = checks.int_array("start", start, ndim=1)
            if start.shape != (batch,):
                raise ValueError(f"start must have shape ({batch},) (one entry per batch row), "
                                 f"got {start.shape}")
            start = start.astype(jnp.int32)
        shapes = [_buffer_shape(spec, batch, max_len) for spec in self.specs]
        keys, values = (tuple(jnp.zeros(shape, self.dtype) for shape in shapes) for _ in range(2))
        return PenzaiCache(keys, values, jnp.zeros((batch,), jnp.int32), start)


def _buffer_shape(spec: _CacheSpec, batch: int, max_len: int) -> tuple[int, ...]:
    return (batch, *(size for _, size in spec.axes[:-1]), max_len, spec.axes[-1][1])


def _buffer_names(spec: _CacheSpec) -> tuple:
    *leading, projection = (name for name, _ in spec.axes)
    return (BATCH_AXIS, *leading, SEQ_AXIS, projection)


class PenzaiForward:
    """``apply_fn(weights, tokens, cache) -> (logits, cache)`` of a penzai LM; see the module docstring.

    Holds the LM with its parameters replaced by slots and its attention layers by caching ones (the
    static part); equal, with equal hashes, for LMs of the same structure and constants.
    """

    def __init__(self, skeleton: Any, params: tuple, cache_specs: tuple[_CacheSpec, ...], vocab_size: int):
        self.skeleton = skeleton          # TransformerLM with ParameterSlots and StateVariableSlots
        self.params = params              # ((label, value treedef, (_LeafSpec, ...)), ...) sorted by label
        self.cache_specs = cache_specs
        self.vocab_size = vocab_size
        leaves, self._treedef = jax.tree.flatten(skeleton)
        self._constants = tuple(_constant_key(leaf) for leaf in leaves)
        self._hash = hash((tuple(p[0] for p in params), cache_specs, vocab_size, self._constants))

    def _key(self):
        return self._treedef, self._constants, self.params, self.cache_specs, self.vocab_size

    def __eq__(self, other):
        return self is other or (isinstance(other, PenzaiForward) and hash(self) == hash(other)
                                 and self._key() == other._key())

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"PenzaiForward({len(self.cache_specs)} attention layers, vocab_size={self.vocab_size})"

    @property
    def __name__(self) -> str:
        return "penzai_forward"

    def bind_params(self, weights: dict) -> Any:
        """The LM skeleton with frozen parameters rebuilt from the raw ``weights``."""
        pz = _penzai()
        if not isinstance(weights, dict) or set(weights) != {p[0] for p in self.params}:
            raise ValueError("weights must be the dict {parameter label: array} returned by from_penzai "
                             "for this model (its labels differ)")
        values = []
        for label, treedef, specs in self.params:
            leaves = jax.tree.leaves(weights[label])
            if len(leaves) != len(specs):
                raise ValueError(f"weights[{label!r}] holds {len(leaves)} arrays, expected {len(specs)}")
            rebuilt = [leaf if spec.names is None else _wrap(pz, leaf, spec)
                       for leaf, spec in zip(leaves, specs)]
            values.append(pz.ParameterValue(value=treedef.unflatten(rebuilt), label=label))
        return pz.bind_variables(self.skeleton, values)

    def __call__(self, weights: dict, tokens: jax.Array, cache: PenzaiCache) -> tuple[jax.Array, PenzaiCache]:
        pz = _penzai()
        tokens = checks.int_array("tokens", tokens, ndim=2)
        batch, length = tokens.shape
        if not isinstance(cache, PenzaiCache):
            raise TypeError("cache must be a PenzaiCache from the model's init_cache(batch, max_len) "
                            "(tokens fed without their cache would be decoded without context), "
                            f"got {type(cache).__name__}")
        if cache.lengths.shape != (batch,) or len(cache.keys) != len(self.cache_specs):
            raise ValueError(f"cache holds {cache.lengths.shape[0]} rows, {len(cache.keys)} layers; tokens "
                             f"have batch {batch} and the model {len(self.cache_specs)} attention layers")
        num_slots = cache.keys[0].shape[-2]
        lengths, start = cache.lengths.astype(jnp.int32), cache.start.astype(jnp.int32)
        query_slots = lengths[:, None] + jnp.arange(length, dtype=jnp.int32)                 # (B, L)
        query_positions = jnp.where(query_slots >= start[:, None], query_slots - start[:, None], -1)
        slots = jnp.arange(num_slots, dtype=jnp.int32)
        filled = (slots >= start[:, None]) & (slots < (lengths + length)[:, None])   # (B, T), after the write
        kv_positions = jnp.where(filled, slots - start[:, None], -1)

        model = self.bind_params(weights)
        state = [pz.StateVariableValue(value=tuple(_wrap_buffer(pz, buffer, spec) for buffer in (k, v)),
                                       label=spec.label, metadata=_state_metadata(spec))
                 for spec, k, v in zip(self.cache_specs, cache.keys, cache.values)]
        logits, new_state = model.stateless_call(
            state, pz.nx.wrap(tokens, BATCH_AXIS, SEQ_AXIS),
            token_positions=pz.nx.wrap(query_positions, BATCH_AXIS, SEQ_AXIS),
            **{KV_POSITIONS: pz.nx.wrap(kv_positions, BATCH_AXIS, SEQ_AXIS),
               WRITE_INDEX: pz.nx.wrap(lengths, BATCH_AXIS)})
        by_label = {var.label: var.value for var in new_state}
        keys, values = [], []
        for spec, old_k in zip(self.cache_specs, cache.keys):
            new_k, new_v = (buffer.unwrap(*_buffer_names(spec)).astype(old_k.dtype)
                            for buffer in by_label[spec.label])
            keys.append(new_k)
            values.append(new_v)
        logits = logits.unwrap(BATCH_AXIS, SEQ_AXIS, "vocabulary")
        return logits, PenzaiCache(tuple(keys), tuple(values), cache.lengths + length, cache.start)


def _wrap(pz, array, spec: _LeafSpec):
    named = array.shape[spec.num_positional:]
    return pz.nx.NamedArray(named_axes=collections.OrderedDict(zip(spec.names, named)), data_array=array)


def _wrap_buffer(pz, buffer: jax.Array, spec: _CacheSpec):
    return pz.nx.wrap(buffer, *_buffer_names(spec))


def _state_metadata(spec: _CacheSpec) -> dict:
    if not spec.stack_axes:
        return {}
    from penzai.nn.layer_stack import LayerStackVarBehavior
    return {"layerstack_axes": {axis: LayerStackVarBehavior.PER_LAYER for axis in spec.stack_axes}}


def _constant_key(leaf: Any) -> Any:
    """A hashable value of a non-parameter leaf of the model (a constant of the compiled program)."""
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError("from_penzai needs a concrete model: call it outside jit/vmap")
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(leaf)
        return value.dtype.str, value.shape, value.tobytes()
    try:
        hash(leaf)
    except TypeError:
        return type(leaf).__name__, repr(leaf)
    return leaf


def _split_params(pz, lm) -> tuple[Any, dict, tuple]:
    """``(skeleton with ParameterSlots, {label: raw value}, static param specs)``."""
    skeleton, params = pz.unbind_params(lm, freeze=True)
    by_label = {param.label: param for param in params}
    # parameters frozen beforehand (pz.freeze_params) are ParameterValues: slot them too (a tied one,
    # e.g. a shared embedding table, appears once per use with the same label)
    frozen = pz.select(skeleton).at_instances_of(pz.ParameterValue)
    for value in frozen.get_sequence():
        by_label.setdefault(value.label, value)
    skeleton = frozen.apply(lambda value: value.get_slot())
    if not by_label:
        raise ValueError("the penzai model holds no pz.Parameter: nothing to pass as weights")
    weights, specs = {}, []
    for label in sorted(by_label, key=str):
        if not isinstance(label, str):
            raise TypeError(f"penzai parameter labels must be strings, got {label!r}")
        leaves, treedef = jax.tree.flatten(by_label[label].value, is_leaf=pz.nx.is_namedarray)
        raw, leaf_specs = [], []
        for leaf in leaves:
            if pz.nx.is_namedarray(leaf):
                leaf = leaf.with_positional_prefix()
                raw.append(leaf.data_array)
                leaf_specs.append(_LeafSpec(tuple(leaf.named_axes), len(leaf.positional_shape)))
            else:
                raw.append(jnp.asarray(leaf))
                leaf_specs.append(_LeafSpec(None))
        weights[label] = raw[0] if len(raw) == 1 and treedef.num_nodes == 1 else tuple(raw)
        specs.append((label, treedef, tuple(leaf_specs)))
    return skeleton, weights, tuple(specs)


def _swap_attention(pz, lm) -> tuple[Any, tuple[_CacheSpec, ...]]:
    """Replace every ``pz.nn.Attention`` by the row-caching attention; its cache specs, in model order."""
    from penzai.nn import layer_stack

    metadata = lm.metadata
    head_axes = tuple(metadata.common_head_axes.items())
    caching = _caching_attention_class()
    masks = pz.nn.ApplyCausalAttentionMask | pz.nn.ApplyCausalSlidingWindowAttentionMask

    def fix_mask(mask):
        if mask.kv_positions_input_name != "token_positions" or mask.seq_axis != SEQ_AXIS:
            raise ValueError(f"from_penzai cannot cache an attention mask with non-standard inputs: {mask!r}")
        return dataclasses.replace(mask, kv_positions_input_name=KV_POSITIONS)

    selection = pz.select(lm.body).at_instances_of(pz.nn.Attention)
    swapped, specs = {}, []
    for index, (keypath, attention) in enumerate(selection.selected_by_path.items()):
        explicit = pz.select(attention).at_instances_of(pz.nn.ApplyExplicitAttentionMask)
        if explicit.count():
            raise ValueError("from_penzai supports causal (and sliding-window) attention masks, not "
                             "ApplyExplicitAttentionMask")
        fixed = pz.select(attention).at_instances_of(masks).apply(fix_mask)
        stack = tuple(layer_stack.layerstack_axes_from_keypath(keypath).items())
        axes = (*stack, *head_axes, ("projection", metadata.projection_dim))
        spec = _CacheSpec(_CACHE_LABEL.format(index), axes, tuple(name for name, _ in stack))
        specs.append(spec)
        swapped[keypath] = caching(
            input_to_query=fixed.input_to_query, input_to_key=fixed.input_to_key,
            input_to_value=fixed.input_to_value, query_key_to_attn=fixed.query_key_to_attn,
            attn_value_to_output=fixed.attn_value_to_output, kv_cache=pz.StateVariableSlot(label=spec.label))
    if not specs:
        raise ValueError("the penzai model has no pz.nn.Attention layer to cache")
    return dataclasses.replace(lm, body=selection.set_by_path(swapped)), tuple(specs)


def from_penzai(lm: Any, *, max_len: int) -> Bound:
    """A penzai ``TransformerLM`` as an itscale token model with traced weights; see the module docstring.

    Args:
      lm: a ``penzai.models.transformer.model_parts.TransformerLM`` (e.g. from ``variants.llamalike_common
        .build_llamalike_transformer`` or a pretrained-checkpoint loader), not its sampling mode.
      max_len: the longest sequence (prompt + new tokens) the samplers may request (static).

    Returns ``its.models.bind(PenzaiForward(...), weights, init_cache=PenzaiInitCache(...),
    vocab_size=lm.metadata.vocab_size, max_len=max_len)``.
    """
    pz = _penzai()
    from penzai.models.transformer import model_parts, sampling_mode

    max_len = checks.positive_int("max_len", max_len)
    if isinstance(lm, sampling_mode.KVCachingTransformerLM):
        raise TypeError("from_penzai takes the uncached TransformerLM, not its sampling mode "
                        "(KVCachingTransformerLM): the adapter keeps its own per-row KV cache")
    if not isinstance(lm, model_parts.TransformerLM):
        raise TypeError(f"from_penzai expects a penzai.models.transformer.model_parts.TransformerLM, "
                        f"got {type(lm).__name__}")
    skeleton, weights, param_specs = _split_params(pz, lm)
    if pz.unbind_variables(skeleton)[1]:
        raise ValueError("the penzai model holds state variables; from_penzai supports stateless LMs only")
    skeleton, cache_specs = _swap_attention(pz, skeleton)
    vocab_size = int(lm.metadata.vocab_size)
    apply_fn = PenzaiForward(skeleton, param_specs, cache_specs, vocab_size)
    init_cache = PenzaiInitCache(cache_specs, jnp.dtype(lm.metadata.activation_dtype))
    return bind(apply_fn, weights, init_cache=init_cache, vocab_size=vocab_size, max_len=max_len)
