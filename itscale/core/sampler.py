"""The one abstraction of itscale: a sampler transform as a tuple of pure functions.

Like optax's ``GradientTransformation`` and blackjax's ``SamplingAlgorithm``, a :class:`Sampler` is a
NamedTuple of pure functions over a pytree state:

* ``init(key, x, params) -> state``                 start from noise / a prompt ``x``
* ``step(key, state, ctx, params) -> (state, info)`` one refinement / token / resampling step;
  ``ctx`` is a :class:`StepContext` (traced step index, static number of steps); ``info`` holds
  per-step diagnostics and is not carried between steps
* ``finalize(state) -> output``                     what the user gets back

``params`` is a pytree of hyper-parameters (temperature, guidance, λ, …) traced by ``its.run`` so that
changing their values never recompiles; a sampler declares its defaults in the optional fourth field
``params`` and ``its.run`` checks that a user's ``params`` has the same structure. Budgets (numbers of
steps, particles, tokens) are static Python ints fixed when the sampler is built or run.

The optional fifth field ``watch(state) -> pytree`` names the part of the state that ``its.run`` checks
for non-finite values after every step (default: all of it). A sampler whose state holds a large
buffer derived from a small one (a KV cache and the logits computed with it) watches the small one:
a NaN in the cache reaches the logits of the same forward, and the check no longer reads the whole
cache every step. A transform of such a sampler passes a watch on (``particles``, ``smc``, the token
searches): one that watches all of a KV cache re-reads it every step (and in the step-level searches
copies every gathered cache once more).

The optional sixth field ``prior(key, x) -> x'`` says what a *query* is. For a refinement sampler the
query is the shape (and any conditioning) of ``x``, and the values of ``x`` are one draw of initial
noise from the path's prior; ``prior`` draws another, independent one of the same shape and dtype.
Width transforms (best-of-N, noise search) call it so that every candidate of a query starts from
its own noise: a deterministic sampler (an ODE) repeated on the same noise would give N copies of
one sample. ``None`` (token samplers): ``x`` is the query itself (the prompts), and candidates differ
through the keys of their steps.

The optional seventh field ``validate(x, params)`` checks *values* that only a concrete input shows:
hyper-parameter ranges (a negative temperature, an ESS threshold above 1) and input domains (token ids
outside the vocabulary). ``its.run`` calls it before tracing with the user's ``x`` and ``params``
(``x`` may be None when a combinator checks parameters only); it must raise ``ValueError`` naming the
argument, skip traced values (:func:`itscale.core.checks.concrete`), and not depend on leading axes
(combinators pass ``x`` with extra particle axes).

The eighth field ``weights`` holds the weights of the models the sampler was built with, as
``((slot, weights), ...)``; ``its.run`` passes them to the compiled loop as arguments (never as
constants) and binds them to the functions' model stand-ins (:mod:`itscale.core.weights`). A sampler
written by hand over closures has none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class StepContext(NamedTuple):
    """Where a step is in the loop: ``step`` is traced (0-based), ``num_steps`` is a static int."""

    step: jax.Array
    num_steps: int


class Sampler(NamedTuple):
    """``Sampler(init, step, finalize, params=None, watch=None, prior=None, validate=None, weights=())``:
    see the module docstring."""

    init: Callable[..., Any]
    step: Callable[..., Any]
    finalize: Callable[[Any], Any]
    params: Any = None
    watch: Callable[[Any], Any] | None = None
    prior: Callable[[Any, Any], Any] | None = None
    validate: Callable[[Any, Any], None] | None = None
    weights: tuple = ()


def watched(sampler: Sampler, state):
    """The part of ``state`` checked for non-finite values: ``sampler.watch(state)``, or all of it."""
    return state if sampler.watch is None else sampler.watch(state)


def watch_within(watch: Callable[[Any], Any] | None, field: str) -> Callable[[Any], Any] | None:
    """The watch of a transform whose state keeps an inner sampler's state in ``field``: ``watch``
    applied to that field, the rest of the state watched whole; None (watch everything) when
    ``watch`` is None."""
    if watch is None:
        return None
    return lambda state: state._replace(**{field: watch(getattr(state, field))})


def validate(sampler: Sampler, x, params) -> None:
    """Run ``sampler.validate(x, params)`` if the sampler has one."""
    if sampler.validate is not None:
        sampler.validate(x, params)


def identity_finalize(state):
    """``finalize`` for samplers whose state is their output."""
    return state
