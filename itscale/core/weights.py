"""Model weights as traced arguments: samplers hashed by their static configuration.

A sampler is a tuple of pure functions, and ``its.run`` compiles them as a static argument. A model
closed over by those functions would be inlined as constants: compile time would grow with the
parameter count and every new set of weights would recompile. So sampler constructors take *models
with weights* -- an ``its.models.Bound`` (``bind(apply_fn, weights)``) or a Flax NNX module -- and
keep their weights out of the functions:

* :func:`takes_models` wraps a constructor. When an argument is such a model (or a sampler that holds
  weights, for a combinator), the constructor is called once with a :class:`ModelProxy` in its place:
  a stand-in whose calls read the weights bound to its :class:`Slot` while ``its.run`` traces. The
  sampler built that way is cached under the constructor's static configuration: the other arguments,
  and each model's structure (apply function or NNX graph, weight tree, shapes and dtypes).
* The returned sampler is the cached one with ``weights`` set to ``((slot, weights), ...)``. A
  sampler built again the same way, with new weights of the same structure (a training step, a
  checkpoint, an ``nnx.update``), has the same functions: ``its.run`` finds its compilation and passes
  the new weights as arguments (:func:`binding`), so nothing is retraced.

Plain closures ``fn(x, t)`` still work and are inlined, as before (fine for analytic models).
This is the equinox idea (a module's arrays are arguments, the rest is static and hashed) applied to
constructors of closures, so that samplers stay NamedTuples of pure functions.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

_CACHE_SIZE = 256
_state = threading.local()


class Slot:
    """The place of one model's weights in a cached sampler (hashed by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name})"


def _bindings() -> list[dict]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextlib.contextmanager
def binding(weights):
    """Bind ``weights`` (a sampler's ``((slot, weights), ...)``) while the ``with`` block traces it."""
    _bindings().append(dict(weights))
    try:
        yield
    finally:
        _bindings().pop()


def current(slot: Slot):
    """The weights bound to ``slot`` by the innermost :func:`binding` that holds it."""
    for bound in reversed(_bindings()):
        if slot in bound:
            return bound[slot]
    raise RuntimeError(f"the weights of model {slot.name} are bound by its.run: call the sampler's functions "
                       "inside its.run, or inside `with itscale.core.binding(sampler.weights):`")


class ModelProxy:
    """Stands for a model with weights inside a cached sampler: ``proxy(*args)`` applies the model to
    the weights bound to its slot; ``forward`` and ``init_cache`` likewise (NNX token models); static
    facts of the model (``vocab_size``, ``max_len``) are copied."""

    def __init__(self, slot: Slot, apply: Callable, facts: dict):
        self._slot, self._apply, self._facts = slot, apply, facts

    def __call__(self, *args, **kwargs):
        return self._apply(current(self._slot), "__call__", *args, **kwargs)

    def __getattr__(self, name: str):
        facts = self.__dict__.get("_facts", {})
        if name not in facts:
            raise AttributeError(name)
        if facts[name] == "method":
            return functools.partial(self._apply_method, name)
        return facts[name]

    def _apply_method(self, name: str, *args, **kwargs):
        return self._apply(current(self._slot), name, *args, **kwargs)


def _apply_bound(apply_fn, init_cache):
    def apply(weights, method, *args, **kwargs):
        if method == "__call__":
            return apply_fn(weights, *args, **kwargs)
        return init_cache(*args, **kwargs)                          # init_cache: static configuration only
    return apply


def _apply_module(graphdef):
    def apply(state, method, *args, **kwargs):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)
    return apply


def _model_parts(value) -> tuple[Any, Any, Callable, dict] | None:
    """``(static key, weights, apply, facts)`` of a model with weights, None for anything else; split
    once per model while :func:`_one_split_per_model` is open (an NNX split walks the whole module)."""
    memo = getattr(_state, "parts", None)
    if memo is not None and id(value) in memo:
        return memo[id(value)][1]
    parts = _split_model(value)
    if memo is not None:
        memo[id(value)] = (value, parts)        # the value is kept alive, so its id stays its own
    return parts


@contextlib.contextmanager
def _one_split_per_model():
    """Within the block, :func:`_model_parts` splits each model once."""
    outer = getattr(_state, "parts", None)
    _state.parts = {} if outer is None else outer
    try:
        yield
    finally:
        _state.parts = outer


def _split_model(value) -> tuple[Any, Any, Callable, dict] | None:
    from itscale.models.bound import Bound
    if isinstance(value, Bound):
        facts = {"vocab_size": value.vocab_size, "max_len": value.max_len}
        if value.init_cache is not None:
            facts["init_cache"] = "method"
        return ("bound", value._static()), value.weights, _apply_bound(value.apply_fn, value.init_cache), facts
    if isinstance(value, nnx.Module):
        graphdef, state = nnx.split(value)
        facts = {name: "method" for name in ("forward", "init_cache") if callable(getattr(value, name, None))}
        vocab = getattr(value, "vocab_size", None)
        if isinstance(vocab, int):
            facts["vocab_size"] = vocab
        return ("nnx", graphdef), state, _apply_module(graphdef), facts
    return None


def has_weights(value) -> bool:
    """Whether ``value`` is a model with weights or a sampler holding some."""
    from itscale.core.sampler import Sampler
    from itscale.models.bound import Bound
    if isinstance(value, Sampler):
        return bool(value.weights)
    return isinstance(value, (Bound, nnx.Module))


def _leaves_signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(leaf), jax.numpy.result_type(leaf), getattr(leaf, "weak_type", False))
                          for leaf in leaves)


class _Unhashable(Exception):
    pass


def static_key(value) -> Any:
    """A hashable key of ``value``'s static meaning: models by structure, samplers by functions and
    slots, small arrays by value, other objects by hash (identity for functions)."""
    from itscale.core.sampler import Sampler
    parts = _model_parts(value)
    if parts is not None:
        return ("model", parts[0], _leaves_signature(parts[1]))
    if isinstance(value, Sampler):
        fields = value._replace(params=None, weights=tuple(slot for slot, _ in value.weights))
        return ("sampler", fields, static_key(value.params))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(static_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, static_key(v)) for k, v in value.items())))
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
        if value.size > 4096:
            raise _Unhashable
        host = np.asarray(value)
        return ("array", host.shape, host.dtype.str, host.tobytes())
    try:
        hash(value)
    except TypeError as error:
        raise _Unhashable from error
    return value


def takes_models(constructor: Callable) -> Callable:
    """Let ``constructor`` take models with traced weights (see the module docstring)."""
    signature = inspect.signature(constructor)
    cache: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(constructor)
    def build(*args, **kwargs):
        with _one_split_per_model():
            return _build(*args, **kwargs)

    def _build(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        found = list(_walk(arguments.values()))
        if not any(has_weights(v) for v in found):
            return constructor(*args, **kwargs)
        try:
            key = static_key(tuple(arguments.items()))
            hit = cache.get(key)
        except _Unhashable:
            key, hit = None, None
        if hit is None:
            hit = _build_static(constructor, signature, arguments)
            if key is not None:
                cache[key] = hit
                if len(cache) > _CACHE_SIZE:
                    cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        sampler, slots = hit
        values = [w for v in found for w in _weights_of(v)]
        return sampler._replace(weights=tuple(zip(slots, values)))

    return build


def _is_sampler(value) -> bool:
    from itscale.core.sampler import Sampler
    return isinstance(value, Sampler)


def _walk(values):
    """The arguments, with lists and tuples (``chain``'s phases) searched recursively; samplers whole."""
    for value in values:
        if isinstance(value, (list, tuple)) and not _is_sampler(value):
            yield from _walk(value)
        else:
            yield value


def _weights_of(value) -> list:
    if _is_sampler(value):
        return [w for _, w in value.weights]
    parts = _model_parts(value)
    return [] if parts is None else [parts[1]]


def _build_static(constructor, signature, arguments):
    """Call ``constructor`` with proxies for the models and weight-free stand-ins for the samplers;
    return the sampler (without weights) and the slots in the order of :func:`_walk`."""
    slots = []

    def replace(value, name):
        if _is_sampler(value):
            slots.extend(slot for slot, _ in value.weights)
            return value._replace(weights=tuple((slot, None) for slot, _ in value.weights))
        if isinstance(value, (list, tuple)):
            return type(value)(replace(v, name) for v in value)
        parts = _model_parts(value)
        if parts is None:
            return value
        slot = Slot(f"{constructor.__name__}.{name}")
        slots.append(slot)
        return ModelProxy(slot, parts[2], parts[3])

    proxied = collections.OrderedDict((name, replace(value, name)) for name, value in arguments.items())
    bound = inspect.BoundArguments(signature, proxied)
    sampler = constructor(*bound.args, **bound.kwargs)
    return sampler._replace(weights=()), slots
