"""``its.run``: the one jitted loop that drives every sampler.

``run(sampler, key, x, num_steps=n)`` computes ``state = init(k0, x, params, StepContext(0, n))`` (the
context only to an ``init`` that takes it: :func:`itscale.core.sampler.init_state`), then ``n`` times
``state, info = step(fold_in(k1, i), state, StepContext(i, n), params)`` inside one ``lax.scan``,
then ``output = finalize(state)``. ``num_steps`` is static (one compilation per budget, whatever the
values in ``params``). Network evaluations and verifier calls are counted by the ledgers of
:mod:`itscale.core.counting`; non-finite values in the state are counted after every step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from itscale.core import checks, counting
from itscale.core.keys import as_key, step_key
from itscale.core.sampler import Sampler, StepContext, init_state, start_context, validate, watched
from itscale.core.weights import binding

MAX_STEPS = 2 ** 31 - 2
"""Largest ``num_steps``: step indices are int32."""

KEY_TABLE_STEPS = 2 ** 20
"""Up to this many steps, the keys of all steps are derived before the loop in one vectorised call (8
bytes a step) and the loop reads its step's key; a longer run derives each key inside its step. The keys
are the same either way; the table spares each step the rounds of the hash, which lower to a loop of
small kernels on CPU (``docs/performance.md``)."""


class SaveAt(NamedTuple):
    """What ``run`` records: ``fn(state)`` (default: the state) after every ``every``-th step."""

    every: int = 1
    fn: Callable[[Any], Any] | None = None


class Trace(NamedTuple):
    """Recorded steps: ``step`` (1-based count of steps done), ``state`` (or ``fn(state)``), ``info``."""

    step: jax.Array
    state: Any
    info: Any


class Stats(NamedTuple):
    """Compute spent and health of a run (all arrays, so ``Result`` is a pytree).

    nfe: network evaluations, one per sample per model call (one per token position for LMs),
        summed over ``init``, every step and ``finalize``.
    nfe_per_sample: ``nfe`` divided by the number of samples (leading axis of ``x``).
    verifier_calls: reward / verifier evaluations, one per sample scored.
    steps: number of steps run.
    nonfinite: number of non-finite floating values seen in the state after the steps (0: clean run),
        in the part the sampler watches (``Sampler.watch``; all of the state by default).
    first_nonfinite_step: first step (0-based) after which the state held a non-finite value, or -1.
    count_overflow: a count passed 2**31 - 1 with ``jax_enable_x64`` off. Counts are carried exactly
        across steps (int64 with x64; two 31-bit limbs without) and are never wrapped: with x64 on
        ``nfe`` / ``verifier_calls`` are exact int64; without, a count that does not fit int32 is
        reported as -1 together with this flag (``nfe_per_sample`` stays right).
    """

    nfe: jax.Array
    nfe_per_sample: jax.Array
    verifier_calls: jax.Array
    steps: jax.Array
    nonfinite: jax.Array
    first_nonfinite_step: jax.Array
    count_overflow: jax.Array


class Result(NamedTuple):
    """``output`` of ``finalize``, ``stats`` (:class:`Stats`) and ``trace`` (:class:`Trace` or None)."""

    output: Any
    stats: Stats
    trace: Trace | None


_LIMB = 31


class _Count(NamedTuple):
    """An exact count ``high * 2**31 + low`` (0 <= low < 2**31) of the loop. Per-step increments are
    :func:`itscale.core.counting.count_dtype` integers; a negative one (an int32 sum that wrapped inside
    a step) sets ``wrapped``."""

    high: jax.Array
    low: jax.Array
    wrapped: jax.Array

    @classmethod
    def zero(cls) -> "_Count":
        zero = counting.zero_count()
        return cls(zero, zero, jnp.zeros((), bool))

    def add(self, increment) -> "_Count":
        increment = jnp.asarray(increment, self.low.dtype)
        wide = jnp.uint64 if self.low.dtype == jnp.int64 else jnp.uint32   # low + increment fits
        total = self.low.astype(wide) + jnp.maximum(increment, 0).astype(wide)
        return _Count(self.high + (total >> _LIMB).astype(self.high.dtype),
                      (total & ((1 << _LIMB) - 1)).astype(self.low.dtype), self.wrapped | (increment < 0))

    def value(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(count, as_float, overflow)``: the count as a count-dtype integer (-1 if it does not fit),
        as a float, and whether it did not fit."""
        as_float = self.high.astype(float) * float(2 ** _LIMB) + self.low.astype(float)
        if self.low.dtype == jnp.int64:
            return (self.high << _LIMB) + self.low, as_float, self.wrapped
        overflow = self.wrapped | (self.high > 0)
        return jnp.where(overflow, -1, self.low), as_float, overflow


class _Tally(NamedTuple):
    """Counts of the loop. ``nonfinite`` and ``first_nonfinite_step`` are kept per watched floating
    leaf and per index of its leading axis (a scalar leaf: one entry), and summed / minimised only
    after the loop: each row's check stays on the device that holds the row, so a run sharded over
    its sample axis needs no collective per step."""

    counts: dict[str, _Count]
    nonfinite: tuple[jax.Array, ...]
    first_nonfinite_step: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, watched_state) -> "_Tally":
        rows = [jnp.zeros(jnp.shape(leaf)[:1], jnp.int32) for leaf in _floating_leaves(watched_state)]
        return cls({kind: _Count.zero() for kind in counting.KINDS}, tuple(rows), tuple(row - 1 for row in rows))

    def add_counts(self, counts: dict[str, jax.Array]) -> "_Tally":
        return self._replace(counts={kind: c.add(counts[kind]) for kind, c in self.counts.items()})

    def add_state(self, state, step) -> "_Tally":
        bad = nonfinite_per_row(state)
        first = tuple(jnp.where((f < 0) & (b > 0), step, f) for f, b in zip(self.first_nonfinite_step, bad))
        return self._replace(nonfinite=tuple(n + b for n, b in zip(self.nonfinite, bad)),
                             first_nonfinite_step=first)

    def totals(self) -> tuple[jax.Array, jax.Array]:
        """Non-finite values over all rows and steps, and the first step that had one (-1: none)."""
        total = sum((jnp.sum(n) for n in self.nonfinite), jnp.zeros((), jnp.int32))
        never = jnp.iinfo(jnp.int32).max
        first = functools.reduce(jnp.minimum, (jnp.min(jnp.where(f < 0, never, f), initial=never)
                                               for f in self.first_nonfinite_step), jnp.int32(never))
        return total, jnp.where(first == never, -1, first).astype(jnp.int32)


def _floating_leaves(tree) -> list:
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]


def nonfinite_per_row(tree) -> tuple[jax.Array, ...]:
    """Per floating leaf of ``tree``: the number of non-finite values in each index of its leading
    axis (int32 of shape ``leaf.shape[:1]``; a scalar leaf gives a scalar). Reductions never cross the
    leading axis, so they stay local to the device of each row on a sharded sample axis."""
    return tuple(jnp.sum(~jnp.isfinite(leaf), axis=tuple(range(1, jnp.ndim(leaf))), dtype=jnp.int32)
                 for leaf in _floating_leaves(tree))


def count_nonfinite(tree) -> jax.Array:
    """Number of non-finite values among the floating leaves of ``tree``."""
    return sum((jnp.sum(rows) for rows in nonfinite_per_row(tree)), jnp.zeros((), jnp.int32))


def _as_saveat(trace) -> SaveAt | None:
    if trace is None:
        return None
    if isinstance(trace, SaveAt):
        checks.positive_int("trace.every", trace.every)
        if trace.fn is not None and not callable(trace.fn):
            raise TypeError(f"trace.fn must be callable, got {type(trace.fn).__name__}")
        return trace
    if isinstance(trace, bool):
        raise TypeError("trace must be None, an int k (every k-th state), a function of the state or a SaveAt")
    if isinstance(trace, int):
        return SaveAt(every=checks.positive_int("trace", trace))
    if callable(trace):
        return SaveAt(every=1, fn=trace)
    raise TypeError("trace must be None, an int k (every k-th state), a function of the state or a "
                    f"SaveAt, got {type(trace).__name__}")


def _canonical_params(sampler: Sampler, params):
    """User ``params`` checked against the sampler's defaults and cast to their dtypes (no retrace).

    A default written as a Python ``int`` or ``float`` is a real-valued hyper-parameter: it is carried
    in jax's default float dtype, so ``lam=1`` and ``lam=0.5`` mean what they say. A bool default stays
    bool; an array default (numpy or jax) fixes its own dtype, the way to declare an integer parameter.
    A value that the dtype cannot represent raises naming the parameter.
    """
    default = sampler.params
    if default is None:
        if jax.tree.leaves(params):
            raise ValueError(f"params: this sampler takes no hyper-parameters (its default params are None), "
                             f"got {params!r}")
        return None
    if params is None:
        params = default
    else:
        checks.same_structure("params", params, default)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(default)[0]]
    values, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(treedef, [_as_dtype(f"params{path}", value, _param_dtype(d))
                                        for path, value, d in zip(paths, values, jax.tree.leaves(default))])


def _param_dtype(default):
    if isinstance(default, bool):
        return jnp.dtype(bool)
    if isinstance(default, (int, float)):
        return jnp.dtype(jax.dtypes.canonicalize_dtype(float))
    return jnp.result_type(default)


def _as_dtype(name: str, value, dtype):
    """``value`` as a strongly typed array of ``dtype``, or an error naming the parameter when the dtype
    cannot represent it (a string, a fraction for an integer, a float beyond the float range). Host
    values stay on the host: jit transfers them with the call, cheaper than making a device array."""
    kind = jnp.dtype(dtype).kind
    if isinstance(value, jax.Array):
        if jnp.issubdtype(value.dtype, jnp.inexact) and kind in "biu":
            raise TypeError(f"{name} must be {dtype} (its default's type), got a {value.dtype} array")
        host = checks.concrete(value)
        if host is None:
            return value.astype(dtype)
    else:
        try:
            host = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - a value numpy cannot read at all
            raise TypeError(f"{name} must be a number or array of {dtype}, got {value!r}") from error
    if host.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be a number or array of {dtype}, got {value!r} of type "
                        f"{type(value).__name__}")
    if host.dtype.kind == "c" and kind != "c":
        raise TypeError(f"{name} must be real ({dtype}), got the complex value {value!r}")
    with np.errstate(all="ignore"):
        cast = host.astype(dtype)
    if kind in "biu" and not np.array_equal(cast.astype(host.dtype), host):
        raise ValueError(f"{name} must hold {dtype} values (its default's type), got {host.tolist()}")
    if kind == "f" and (np.isfinite(host) & ~np.isfinite(cast)).any():
        raise ValueError(f"{name} = {host.tolist()} overflows {dtype}")
    return cast if not isinstance(value, jax.Array) else value.astype(dtype)


def _num_samples(x) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x must hold at least one array (the noise or the prompts to start from)")
    shape = jnp.shape(leaves[0])
    return int(shape[0]) if shape else 1


def run(sampler: Sampler, key, x, *, num_steps: int, params=None, trace=None) -> Result:
    """Run ``sampler`` for ``num_steps`` (static) steps from ``x``; see the module docstring.

    Args:
      sampler: an :class:`itscale.Sampler`.
      key: a PRNG key; the same key gives the same result.
      x: starting point (noise of shape (batch, ...) or prompts), a pytree of arrays.
      num_steps: static positive int; one compilation per value.
      params: hyper-parameter pytree, same structure as ``sampler.params`` (its default when None);
        traced, so new values never recompile.
      trace: None (record nothing), an int k (record the state every k steps), a function of the
        state (record its value every step) or :class:`SaveAt`.
    """
    return _run(*_arguments(sampler, key, x, num_steps, params, trace))


def lower(sampler: Sampler, key, x, *, num_steps: int, params=None, trace=None) -> jax.stages.Lowered:
    """The compiled loop of ``run(sampler, key, x, ...)``, lowered (``.as_text()``, ``.compile()``,
    ``.cost_analysis()``), without running it: for inspecting the program and timing its compilation."""
    return _run.lower(*_arguments(sampler, key, x, num_steps, params, trace))


def _arguments(sampler, key, x, num_steps, params, trace) -> tuple:
    """The checked arguments of the jitted loop: the sampler without its params and weights (static),
    the budget, what to save, and the traced key, ``x``, params and weights."""
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be an itscale.Sampler, got {type(sampler).__name__}")
    num_steps = checks.positive_int("num_steps", num_steps)
    if num_steps > MAX_STEPS:
        raise ValueError(f"num_steps must be at most {MAX_STEPS} (steps are indexed by int32), got {num_steps}")
    key = as_key("key", key)
    save = _as_saveat(trace)
    if save is not None and save.every > num_steps:
        raise ValueError(f"trace every={save.every} records nothing in num_steps={num_steps} steps; "
                         "use every <= num_steps")
    x = jax.tree.map(lambda leaf: leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf), x)
    params = _canonical_params(sampler, params)
    validate(sampler, x, params)
    static = sampler._replace(params=None, weights=tuple((slot, None) for slot, _ in sampler.weights))
    return static, num_steps, save, key, x, params, tuple(w for _, w in sampler.weights)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(sampler: Sampler, num_steps: int, save: SaveAt | None, key, x, params, weights) -> Result:
    """The compiled loop; ``weights`` are the models' weights, bound to the sampler's slots while tracing."""
    with binding(zip((slot for slot, _ in sampler.weights), weights)):
        return _loop(sampler, num_steps, save, key, x, params)


def _loop(sampler: Sampler, num_steps: int, save: SaveAt | None, key, x, params) -> Result:
    init_key, loop_key = jax.random.split(key)
    with counting.ledger() as led:
        state = init_state(sampler, init_key, x, params, start_context(num_steps))
    tally = _Tally.zeros(watched(sampler, state)).add_counts(led.totals())

    all_steps = jnp.arange(num_steps, dtype=jnp.int32)
    key_table = (jax.vmap(lambda step: step_key(loop_key, step))(all_steps)
                 if num_steps <= KEY_TABLE_STEPS else None)

    def one_step(state, step, key):
        with counting.ledger() as led:
            state, info = sampler.step(key, state, StepContext(step, num_steps), params)
        return state, info, led.totals()

    def body(carry, step_and_key):
        (state, tally), (step, key) = carry, step_and_key
        state, info, counts = one_step(state, step, step_key(loop_key, step) if key is None else key)
        return (state, tally.add_counts(counts).add_state(watched(sampler, state), step)), info

    def steps(carry, start, length):
        """``length`` steps from ``start``; returns the carry and the last step's info."""
        keys = None if key_table is None else lax.dynamic_slice_in_dim(key_table, start, length)
        carry, infos = lax.scan(body, carry, (start + jnp.arange(length, dtype=jnp.int32), keys))
        return carry, jax.tree.map(lambda a: a[-1], infos)

    carry = (state, tally)
    recorded = None
    if save is None:
        carry = lax.scan(lambda c, s: (body(c, s)[0], None), carry, (all_steps, key_table))[0]
    else:
        # Blocks of ``every`` steps, recording after each; the infos of a block are transient.
        k, num_records = save.every, num_steps // save.every
        record_fn = save.fn if save.fn is not None else (lambda s: s)

        def block(carry, i):
            carry, info = steps(carry, i * k, k)
            return carry, Trace((i + 1) * k, record_fn(carry[0]), info)

        carry, recorded = lax.scan(block, carry, jnp.arange(num_records, dtype=jnp.int32))
        if num_steps % k:
            carry, _ = steps(carry, num_records * k, num_steps % k)

    state, tally = carry
    with counting.ledger() as led:
        output = sampler.finalize(state)
    tally = tally.add_counts(led.totals())
    nonfinite, first_nonfinite_step = tally.totals()
    (nfe, nfe_float, nfe_overflow), (calls, _, calls_overflow) = (tally.counts[kind].value()
                                                                  for kind in counting.KINDS)
    stats = Stats(nfe=nfe,
                  nfe_per_sample=nfe_float / _num_samples(x),
                  verifier_calls=calls,
                  steps=jnp.asarray(num_steps, jnp.int32),
                  nonfinite=nonfinite,
                  first_nonfinite_step=first_nonfinite_step,
                  count_overflow=nfe_overflow | calls_overflow)
    return Result(output, stats, recorded)
