"""Argument checks that run before any compute.

Every check raises ``ValueError`` or ``TypeError`` whose message names the argument and says what is
accepted, so that a bad static argument fails at construction or trace time, never inside a loop.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a Python int >= {minimum} (a static budget), got {value!r} "
                        f"of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise list the accepted names."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(repr(c) for c in choices)}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *, inclusive: bool = True) -> float:
    """Return ``value`` as a float if ``low <= value <= high`` (strict when ``inclusive=False``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [{low}, {high}], got {value!r}")
    ok = low <= value <= high if inclusive else low < value < high
    if not ok:
        bracket = "[]" if inclusive else "()"
        raise ValueError(f"{name} must lie in {bracket[0]}{low}, {high}{bracket[1]}, got {value}")
    return float(value)


def int_array(name: str, value: Any, *, ndim: int | None = None) -> jax.Array:
    """Return ``value`` as an integer array, checking its rank."""
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def model_output(name: str, out: Any, like: Any) -> None:
    """Check that a model function's output is one array with the shape and dtype of the state it updates.

    Shapes are static under ``jit``, so this check runs at trace time, before any compute.
    """
    if not isinstance(out, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must return one array of the state's shape {jnp.shape(like)} and dtype "
                        f"{jnp.result_type(like)}, got a {type(out).__name__}; a model with extra outputs "
                        f"(a tuple, a dict) is passed as lambda x, t: fn(x, t)[0]")
    out_shape, like_shape = jnp.shape(out), jnp.shape(like)
    if out_shape != like_shape:
        raise ValueError(f"{name} returned shape {out_shape}, but the state it updates has shape "
                         f"{like_shape}; the model function must map x -> array of the same shape")
    out_dtype, like_dtype = jnp.result_type(out), jnp.result_type(like)
    if out_dtype != like_dtype:
        kind = "floating values" if jnp.issubdtype(like_dtype, jnp.floating) else "values"
        raise TypeError(f"{name} returned dtype {out_dtype}, but the state has dtype {like_dtype}; the model "
                        f"function must return {kind} of the state's dtype {like_dtype} (cast inside it, "
                        f"e.g. out.astype(x.dtype))")


def same_structure(name: str, value: Any, reference: Any) -> None:
    """Check that ``value`` is a pytree with the structure and leaf shapes of ``reference``."""
    got, want = jax.tree.structure(value), jax.tree.structure(reference)
    if got != want:
        raise ValueError(f"{name} must have the structure {want}, got {got}")
    for path, a, b in zip(jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree.leaves(value),
                          jax.tree.leaves(reference)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{name}{jax.tree_util.keystr(path[0])} must have shape {np.shape(b)}, "
                             f"got {np.shape(a)}")


def sampler(name: str, value: Any) -> None:
    """``value`` must be an ``itscale.Sampler`` (``TypeError`` naming ``name`` otherwise)."""
    from itscale.core.sampler import Sampler     # here: the sampler module's helpers use these checks
    if not isinstance(value, Sampler):
        raise TypeError(f"{name} must be an itscale.Sampler, got {type(value).__name__}")


def path(name: str, value: Any, *, optional: bool = False, context: str = "") -> Any:
    """``value`` must be an ``itscale.paths.Path`` (or None when ``optional``): ``TypeError`` naming ``name``
    otherwise, with ``context`` (what needs the path) when given. Returns ``value``."""
    from itscale.paths.path import Path
    if (value is None and optional) or isinstance(value, Path):
        return value
    accepted = "an itscale.paths.Path (e.g. itscale.paths.linear())" + (" or None" if optional else "")
    raise TypeError(f"{name} must be {accepted}{context}, got {value!r}")


def function(name: str, value: Any, contract: str) -> None:
    """``value`` must be callable (``TypeError`` naming ``name`` and its ``contract`` otherwise)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable ({contract}), got {type(value).__name__}")


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a host array when it is concrete and held by this process; None when it is traced
    (inside ``jit``/``vmap``) or spans devices of other processes (a multi-process run: checking it would
    need a collective, so it is skipped)."""
    leaves = jax.tree.leaves(value)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return None
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for leaf in leaves):
        return None
    return np.asarray(value)


def token_ids(name: str, value: Any, vocab_size: int, vocabulary: str = "the vocabulary") -> None:
    """Concrete integer token ids in ``value`` must lie in [0, vocab_size); traced ones cannot be checked."""
    host = None if value is None else concrete(value)
    if host is None or host.dtype.kind not in "iu":
        return
    bad = (host < 0) | (host >= vocab_size)
    if bad.any():
        raise ValueError(f"{name} hold token ids outside {vocabulary} [0, {vocab_size}): "
                         f"{sorted(set(host[bad].tolist()))[:8]}")


def param_ranges(**ranges: tuple):
    """A ``Sampler.validate``: each named hyper-parameter, when concrete, lies in its range ``(low, high)``
    (closed) or ``(low, high, brackets)`` with ``brackets`` one of ``"[]"``, ``"(]"``, ``"[)"``, ``"()"``
    (``"(]"``: low excluded, e.g. a step size that must be positive).

    The returned ``check(x, params)`` ignores ``x``, reads entries of a dict or fields of a NamedTuple by
    name and raises ``ValueError`` naming ``params[name]`` and the accepted range; missing entries (an
    optional stage that was not built) are skipped.
    """
    bounds = {}
    for name, spec in ranges.items():
        low, high, brackets = (*spec, "[]") if len(spec) == 2 else spec
        if brackets not in ("[]", "(]", "[)", "()"):
            raise ValueError(f"the range of {name} has brackets {brackets!r}; use '[]', '(]', '[)' or '()'")
        bounds[name] = (low, high, brackets)

    def outside(host, low, high, brackets) -> bool:
        below = host <= low if brackets[0] == "(" else host < low
        above = host >= high if brackets[1] == ")" else host > high
        return bool(np.isnan(host).any() or below.any() or above.any())

    def check(x, params) -> None:
        for name, (low, high, brackets) in bounds.items():
            value = params.get(name) if isinstance(params, dict) else getattr(params, name, None)
            host = None if value is None else concrete(value)
            if host is None:
                continue
            host = host.astype(np.float64)       # compare in float64: a bound may not fit the value's dtype
            if outside(host, low, high, brackets):
                raise ValueError(f"params[{name!r}] must lie in {brackets[0]}{low}, {high}{brackets[1]}, "
                                 f"got {host.tolist()}")

    return check
