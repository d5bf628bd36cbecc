"""``bind(apply_fn, weights)``: a model as a pytree whose leaves are its weights.

``Bound(apply_fn, weights)(*args) = apply_fn(weights, *args)``: ``apply_fn(weights, x, t)`` for a
velocity / denoiser / score model, ``apply_fn(weights, tokens, cache) -> (logits, cache)`` for a token
model. The weights are the pytree's children and ``apply_fn`` (with the optional token-model facts
``init_cache``, ``vocab_size`` and ``max_len``) its static part, so every sampler receives the weights as
traced arguments of its compiled loop (see ``docs/design.md``): new weights of the same structure never
recompile, and compile time does not grow with the parameter count. ``apply_fn`` should be a module-level
function (or any object that hashes by its meaning): a fresh lambda per call hashes as a new model.

``init_cache(batch, max_len, *, start=None)`` builds the KV cache of a token model (it may read static
configuration only, not the weights); ``vocab_size`` lets samplers check prompt ids before a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from itscale.core import checks


@jax.tree_util.register_pytree_node_class
class Bound:
    """A pure ``apply_fn`` with its ``weights``; see the module docstring."""

    def __init__(self, apply_fn: Callable, weights: Any, *, init_cache: Callable | None = None,
                 vocab_size: int | None = None, max_len: int | None = None):
        self.apply_fn, self.weights = apply_fn, weights
        self.init_cache, self.vocab_size, self.max_len = init_cache, vocab_size, max_len

    def __call__(self, *args, **kwargs):
        return self.apply_fn(self.weights, *args, **kwargs)

    def _static(self) -> tuple:
        return self.apply_fn, self.init_cache, self.vocab_size, self.max_len

    def tree_flatten(self):
        return (self.weights,), self._static()

    @classmethod
    def tree_unflatten(cls, static, children):
        apply_fn, init_cache, vocab_size, max_len = static
        return cls(apply_fn, children[0], init_cache=init_cache, vocab_size=vocab_size, max_len=max_len)

    def __repr__(self) -> str:
        size = sum(getattr(leaf, "size", 1) for leaf in jax.tree.leaves(self.weights))
        return f"Bound({getattr(self.apply_fn, '__name__', self.apply_fn)!r}, {size} weights)"


def bind(apply_fn: Callable, weights: Any, *, init_cache: Callable | None = None, vocab_size: int | None = None,
         max_len: int | None = None) -> Bound:
    """A model with traced weights: ``apply_fn(weights, *args)``; see the module docstring."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be a callable apply_fn(weights, *args), got {type(apply_fn).__name__}")
    if init_cache is not None and not callable(init_cache):
        raise TypeError(f"init_cache must be None or a callable, got {type(init_cache).__name__}")
    if vocab_size is not None:
        vocab_size = checks.positive_int("vocab_size", vocab_size)
    if max_len is not None:
        max_len = checks.positive_int("max_len", max_len)
    if not jax.tree.leaves(weights):
        raise ValueError("weights must hold at least one array (the model's parameters)")
    return Bound(apply_fn, weights, init_cache=init_cache, vocab_size=vocab_size, max_len=max_len)
