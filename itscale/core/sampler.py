"""The one abstraction of itscale: a sampler transform as a tuple of pure functions.

Like optax's ``GradientTransformation`` and blackjax's ``SamplingAlgorithm``, a :class:`Sampler` is a
NamedTuple of pure functions over a pytree state:

* ``init(key, x, params[, ctx]) -> state``          start from noise / a prompt ``x``
* ``step(key, state, ctx, params) -> (state, info)`` one refinement / token / resampling step;
  ``ctx`` is a :class:`StepContext` (traced step index, static number of steps); ``info`` holds
  per-step diagnostics and is not carried between steps
* ``finalize(state) -> output``                     what the user gets back

``init`` may take a fourth argument ``ctx``, the :class:`StepContext` of the start
(``StepContext(step=0, num_steps)``): its static ``num_steps`` is that of the run, or of the phase under
``its.chain``. A sampler that sizes a buffer by the number of steps reads it there (a token rollout
built without ``max_new_tokens`` allocates ``prompt_len + ctx.num_steps`` columns). An ``init`` written
as ``init(key, x, params)`` keeps working: every caller goes through :func:`init_state`, which passes
``ctx`` only to an ``init`` that declares it (a parameter named ``ctx``, a ``*args`` or a fourth
required positional parameter). A combinator's ``init`` takes ``ctx`` and passes it down with
:func:`init_state`; library ``init`` functions default it to None, so that a call outside ``its.run``
needs no context unless the sampler must know its budget (then it raises, naming the missing budget).

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

The ninth field ``nfe_per_step`` declares, as a static int, the most network evaluations one step
makes per row of ``x`` (a Runge–Kutta solver's number of stages, 1 for an SDE step), or None when the
sampler does not say. Width strategies that take a total NFE budget (:mod:`itscale.search.split`)
plan with it; the run's ``stats.nfe`` is the measured cost.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class StepContext(NamedTuple):
    """Where a step is in the loop: ``step`` is traced (0-based), ``num_steps`` is a static int."""

    step: jax.Array
    num_steps: int


class Sampler(NamedTuple):
    """``Sampler(init, step, finalize, params=None, watch=None, prior=None, validate=None, weights=(),
    nfe_per_step=None)``: see the module docstring."""

    init: Callable[..., Any]
    step: Callable[..., Any]
    finalize: Callable[[Any], Any]
    params: Any = None
    watch: Callable[[Any], Any] | None = None
    prior: Callable[[Any, Any], Any] | None = None
    validate: Callable[[Any, Any], None] | None = None
    weights: tuple = ()
    nfe_per_step: int | None = None


def start_context(num_steps: int) -> StepContext:
    """The context ``init`` receives: ``StepContext(step=0 (int32), num_steps)``."""
    return StepContext(jnp.zeros((), jnp.int32), num_steps)


_NO_CTX, _POSITIONAL, _KEYWORD = "none", "positional", "keyword"
_ctx_modes: "weakref.WeakKeyDictionary[Callable, str]" = weakref.WeakKeyDictionary()


def _ctx_mode(init: Callable) -> str:
    """How ``init`` takes the context: as its fourth positional argument (a parameter ``ctx`` in that
    place, a ``*args`` or a fourth required positional parameter), by the keyword ``ctx``, or not at
    all. Decided once per function from its signature."""
    try:
        return _ctx_modes[init]
    except (KeyError, TypeError):   # not seen yet, or not weakly referable / hashable
        pass
    try:
        parameters = list(inspect.signature(init).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): the three-argument form
        mode = _NO_CTX
    else:
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        fourth = positional[3] if len(positional) > 3 else None
        if fourth is not None and (fourth.name == "ctx" or fourth.default is fourth.empty):
            mode = _POSITIONAL
        elif any(p.name == "ctx" and p.kind != p.POSITIONAL_ONLY for p in parameters[3:]):
            mode = _KEYWORD
        elif fourth is None and any(p.kind == p.VAR_POSITIONAL for p in parameters):
            mode = _POSITIONAL
        else:
            mode = _NO_CTX
    try:
        _ctx_modes[init] = mode
    except TypeError:
        pass
    return mode


def takes_context(init: Callable) -> bool:
    """Whether :func:`init_state` passes the context to ``init``."""
    return _ctx_mode(init) != _NO_CTX


def init_state(sampler: Sampler, key, x, params, ctx: StepContext | None):
    """``sampler.init(key, x, params, ctx)`` if its ``init`` takes the context (see the module
    docstring), else ``sampler.init(key, x, params)``. Every caller of an ``init`` goes through here."""
    mode = _ctx_mode(sampler.init)
    if mode == _POSITIONAL:
        return sampler.init(key, x, params, ctx)
    if mode == _KEYWORD:
        return sampler.init(key, x, params, ctx=ctx)
    return sampler.init(key, x, params)


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
