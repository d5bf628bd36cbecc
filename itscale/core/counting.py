"""Counting network evaluations (NFE) and verifier calls, correctly under ``vmap``, ``scan`` and ``cond``.

How it works. Samplers never count by hand: they wrap the model function with :func:`counted`. Each
call of a counted function adds its *cost* (by default the leading batch size of its first argument;
for token models the number of token positions, :func:`token_positions`) to the innermost open
:class:`Ledger`. ``its.run`` opens a ledger around ``init``, around every ``step`` inside its
``lax.scan`` body and around ``finalize``, and adds each ledger's totals to counters carried through
the loop, so a step traced once but run ``num_steps`` times is counted ``num_steps`` times.

Inside a step, JAX control flow that calls a model must go through the counting drop-ins of this
module: :func:`vmap` (counts are summed over the mapped axis, so N particles of batch b count N·b),
:func:`scan` and :func:`while_loop` (counts are carried per iteration) and :func:`cond` / :func:`switch`
(only the branch taken is counted). Each opens a ledger inside the transformed function and returns
its totals as an ordinary output, so counts are runtime values, exact even when data dependent.

Under :func:`vmap` the default cost (the leading size of the first argument) is only right if the
mapped function's arguments still lead with a batch of rows. ``vmap(..., rows="batched")`` says they
do (``its.particles``: each particle holds a batch), ``rows="single"`` says each mapped call sees one
example (a default-cost call then costs 1 per example); without ``rows``, a default-cost call whose
first argument has fewer than two axes is ambiguous and raises, naming both ways out (declare
``rows``, or give the counted function an explicit ``cost``).
A counted function called under a raw ``jax.vmap``/``lax.cond``/``lax.scan``/nested ``jit`` inside a
step would be miscounted; it is detected (the JAX trace differs from the ledger's) and raises
``RuntimeError`` naming the drop-in to use. Differentiation (``jax.grad``/``jvp``) of a counted
function is allowed and counts the forward evaluation once.

Outside any ledger (plain eager use) counted functions behave exactly like the wrapped function.

Kinds: ``"nfe"`` (network evaluations) and ``"verifier"`` (reward / verifier calls). Counts are :func:`count_dtype`
integers: int64 when ``jax_enable_x64`` is on, int32 otherwise; a static cost that does not fit
raises ``OverflowError``, and ``its.run`` carries its totals across steps without wrapping.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jax._src import core as _jax_core   # the trace context: the check that no call is miscounted

KINDS = ("nfe", "verifier")
_COUNTED_ATTR = "__itscale_counted__"


def _current_trace():
    """The JAX trace a call is made under. Counting is exact only if a counted call is traced under the
    ledger's own trace; without JAX's trace context that cannot be checked, so it is an error, never a
    silently switched-off check."""
    context = getattr(_jax_core, "trace_ctx", None)
    if context is None or not hasattr(context, "trace"):
        raise RuntimeError(f"itscale's NFE counting reads JAX's trace context (jax._src.core.trace_ctx.trace), "
                           f"which this JAX ({jax.__version__}) lacks; install a JAX version supported by "
                           "itscale (see pyproject.toml)")
    trace = context.trace
    # Differentiation traces sit on top of the trace that owns the ledger: look through them.
    while type(trace).__name__ in ("JVPTrace", "LinearizeTrace") and hasattr(trace, "parent_trace"):
        trace = trace.parent_trace
    return trace


class Ledger:
    """Totals of counted calls made while this ledger is the innermost open one."""

    def __init__(self):
        self.entries = {kind: [] for kind in KINDS}
        self.trace = _current_trace()

    def add(self, kind: str, cost: Any) -> None:
        if _current_trace() is not self.trace:
            raise RuntimeError(
                "a counted model/verifier function was called under a JAX transformation that itscale "
                "cannot count (raw jax.vmap, lax.cond/switch/scan/while_loop or a nested jit inside a "
                "sampler step); use itscale.core.vmap / cond / switch / scan / while_loop instead")
        self.entries[kind].append(cost)

    def totals(self) -> dict[str, jax.Array]:
        """Sum of costs per kind, as :func:`count_dtype` arrays (zero for kinds never called)."""
        return {kind: sum((as_count(c) for c in costs), zero_count()) for kind, costs in self.entries.items()}


def count_dtype():
    """Integer dtype of counts: int64 with ``jax_enable_x64``, else int32."""
    return jnp.dtype(jnp.int64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.int32)


def zero_count() -> jax.Array:
    return jnp.zeros((), count_dtype())


def as_count(cost) -> jax.Array:
    """A cost as a count; a static cost beyond the count dtype raises ``OverflowError`` (never wraps)."""
    dtype = count_dtype()
    if isinstance(cost, int) and not 0 <= cost <= jnp.iinfo(dtype).max:
        raise OverflowError(f"a single model call costs {cost} evaluations, beyond the {dtype} counters "
                            f"(max {jnp.iinfo(dtype).max}); enable jax_enable_x64 for 64-bit counts or split "
                            "the batch")
    return jnp.asarray(cost).astype(dtype)


_state = threading.local()


def _active_kinds() -> set[str]:
    """Kinds of the counted functions being called right now (to count nested calls once)."""
    if not hasattr(_state, "active"):
        _state.active = set()
    return _state.active


def _vmap_rows() -> list[str | None]:
    """The ``rows`` declarations of the :func:`vmap` calls being traced, innermost last."""
    if not hasattr(_state, "vmap_rows"):
        _state.vmap_rows = []
    return _state.vmap_rows


def _default_cost(fn_name: str, args, kwargs):
    """:func:`batch_size`, read according to the innermost :func:`vmap`'s ``rows`` declaration."""
    rows = _vmap_rows()[-1] if _vmap_rows() else "batched"
    if rows == "single":
        return 1
    first = jax.tree.leaves(args[0]) if args else []
    if rows is None and (not first or jnp.ndim(first[0]) < 2):
        raise ValueError(
            f"counted function {fn_name!r} is called under itscale.core.counting.vmap with a first argument "
            f"of shape {jnp.shape(first[0]) if first else ()}: its leading axis may or may not be a batch. "
            "Declare vmap(..., rows='batched') (arguments keep a leading batch axis) or rows='single' (one "
            "example per mapped call), or give counted(fn, cost=...) an explicit cost")
    return batch_size(*args, **kwargs)


def _stack() -> list[Ledger]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextlib.contextmanager
def ledger():
    """Open a ledger for the calls traced inside the ``with`` block."""
    led = Ledger()
    _stack().append(led)
    try:
        yield led
    finally:
        _stack().pop()


def record(counts: dict[str, Any]) -> None:
    """Add per-kind totals (e.g. returned by an inner ledger) to the innermost open ledger, if any."""
    stack = _stack()
    if stack:
        for kind, value in counts.items():
            stack[-1].entries[kind].append(value)


def batch_size(x, *args, **kwargs) -> int:
    """Default cost: the leading dimension of the first argument (1 for a scalar)."""
    shape = jnp.shape(jax.tree.leaves(x)[0])
    return int(shape[0]) if shape else 1


def token_positions(tokens, *args, **kwargs) -> int:
    """Cost of a token model call ``logits_fn(tokens, cache)``: batch × new positions."""
    shape = jnp.shape(tokens)
    size = 1
    for d in shape:
        size *= int(d)
    return size


def counted(fn: Callable, *, kind: str = "nfe", cost: Callable[..., Any] = batch_size) -> Callable:
    """Wrap ``fn`` so each call adds ``cost(*args)`` to the open ledger under ``kind``.

    Wrapping an already counted function returns it unchanged, and a counted function called from
    inside another one of the same kind (an adapter around a counted model, say) is counted once, by
    the outermost, so samplers can wrap whatever the user passes without double counting.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; accepted: {', '.join(map(repr, KINDS))}")
    if not callable(fn):
        raise TypeError(f"counted expects a callable, got {type(fn).__name__}")
    if getattr(fn, _COUNTED_ATTR, None) == kind:
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        active = _active_kinds()
        if kind in active:  # called from inside another counted function of this kind: counted there
            return fn(*args, **kwargs)
        active.add(kind)
        try:
            out = fn(*args, **kwargs)
        finally:
            active.discard(kind)
        stack = _stack()
        if stack:
            spent = (_default_cost(getattr(fn, "__name__", repr(fn)), args, kwargs) if cost is batch_size
                     else cost(*args, **kwargs))
            stack[-1].add(kind, spent)
        return out

    setattr(wrapped, _COUNTED_ATTR, kind)
    return wrapped


def _with_counts(fn: Callable) -> Callable:
    """``fn`` returning ``(out, totals)`` where totals are the counts of calls traced inside it."""

    def inner(*args, **kwargs):
        with ledger() as led:
            out = fn(*args, **kwargs)
        return out, led.totals()

    return inner


_ROWS = (None, "batched", "single")


def vmap(fn: Callable, in_axes=0, out_axes=0, axis_size: int | None = None, *, rows: str | None = None) -> Callable:
    """``jax.vmap`` that sums the counts of calls inside ``fn`` over the mapped axis.

    ``rows``: ``"batched"`` (``fn``'s arguments keep a leading batch axis: default costs read it),
    ``"single"`` (one example per mapped call: a default-cost call costs 1) or None (a default-cost
    call on an argument of fewer than two axes raises as ambiguous); see the module docstring.
    """
    if rows not in _ROWS:
        raise ValueError(f"rows must be one of {_ROWS}, got {rows!r}")

    def declared(*args, **kwargs):
        _vmap_rows().append(rows)
        try:
            return fn(*args, **kwargs)
        finally:
            _vmap_rows().pop()

    mapped = jax.vmap(_with_counts(declared), in_axes=in_axes, out_axes=(out_axes, 0), axis_size=axis_size)

    def outer(*args, **kwargs):
        out, counts = mapped(*args, **kwargs)
        record({k: v.sum() for k, v in counts.items()})
        return out

    return outer


def scan(f: Callable, init, xs=None, length: int | None = None, **kwargs):
    """``lax.scan`` whose body's counts are added once per iteration."""
    body = _with_counts(f)

    def counting_body(carry, x):
        state, total = carry
        (state, y), counts = body(state, x)
        return (state, jax.tree.map(jnp.add, total, counts)), y

    zeros = {k: zero_count() for k in KINDS}
    (final, total), ys = lax.scan(counting_body, (init, zeros), xs, length=length, **kwargs)
    record(total)
    return final, ys


def while_loop(cond_fun: Callable, body_fun: Callable, init_val):
    """``lax.while_loop`` whose body's counts are added once per iteration actually run."""
    body = _with_counts(body_fun)

    def counting_body(carry):
        val, total = carry
        val, counts = body(val)
        return val, jax.tree.map(jnp.add, total, counts)

    zeros = {k: zero_count() for k in KINDS}
    final, total = lax.while_loop(lambda c: cond_fun(c[0]), counting_body, (init_val, zeros))
    record(total)
    return final


def unless(done, fn: Callable, state):
    """``state`` if ``done`` else ``fn(state)``, counting ``fn``'s evaluations only when it runs.

    A ``lax.while_loop`` of at most one iteration rather than ``lax.cond(done, identity, fn, state)``: XLA
    updates a loop's carry in place, while a cond copies every array its identity branch passes through
    (a token sampler's KV caches, on every step after the rows are done and again into the enclosing loop).
    """
    def body(carry):
        value, _ = carry
        return fn(value), jnp.bool_(True)

    return while_loop(lambda carry: ~(carry[1] | done), body, (state, jnp.bool_(False)))[0]


def switch(index, branches, *operands):
    """``lax.switch`` counting only the branch taken."""
    out, counts = lax.switch(index, [_with_counts(b) for b in branches], *operands)
    record(counts)
    return out


def cond(pred, true_fun: Callable, false_fun: Callable, *operands):
    """``lax.cond`` counting only the branch taken."""
    out, counts = lax.cond(pred, _with_counts(true_fun), _with_counts(false_fun), *operands)
    record(counts)
    return out


def eval_shape(fn: Callable, *args, **kwargs):
    """``jax.eval_shape`` of a function that may call counted functions (its counts are discarded)."""
    return jax.eval_shape(lambda *a, **k: _with_counts(fn)(*a, **k)[0], *args, **kwargs)


def static_cost(fn: Callable, *args, kind: str = "nfe") -> int | None:
    """What ``fn(*args)`` would count under ``kind``, read from an abstract trace (``jax.eval_shape``) in a
    ledger of its own: nothing runs and nothing is counted. None when a cost is a traced value (a call
    under a counting drop-in, a data-dependent cost), which only a run can measure."""
    costs = []

    def probe(*a):
        with ledger() as led:
            out = fn(*a)
        costs.extend(led.entries[kind])
        return out

    jax.eval_shape(probe, *args)
    return sum(int(c) for c in costs) if all(isinstance(c, numbers.Integral) for c in costs) else None
