"""``grid_times(grid, path)``: the rule giving a sampler's ``num_steps + 1`` times from its grid spec.

A grid is a kind name (``"uniform"``, ``"quadratic"``, ``"karras"``, ``"log_snr"``), an
:class:`itscale.paths.Grid`, or an explicit strictly decreasing array of times in [0, 1]. The number
of steps is static, so the times are a constant at trace time. Shared by every refine sampler.

Precision. Times, and every solver coefficient derived from them, are computed in
``time_dtype(state dtype)``, at least float32: a bfloat16 grid of 1000 uniform steps holds 255 distinct
times (746 steps of length 0, still counted in NFE). A step computes its new state in that dtype too, and
the sampler stores it back in the state's own dtype (:func:`round_like`, stochastically for bfloat16 and
float16), so a bfloat16 state stays bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from itscale.paths.grids import Grid, check_times
from itscale.paths.grids import grid as as_grid
from itscale.paths.path import Path

_GRIDS_NEEDING_PATH = ("karras", "log_snr")
_ROUNDING_STREAM = 0x526F756E  # fold_in tag of the rounding draws, apart from the solver's own use of the key


def time_dtype(state_dtype) -> jnp.dtype:
    """The dtype of the times and solver coefficients of a state of ``state_dtype``: the promotion of
    ``state_dtype`` with float32 (float32 for bfloat16 / float16 / float32 states, float64 for float64)."""
    return jnp.promote_types(state_dtype, jnp.float32)


def round_like(key, new, old):
    """``new`` (a step's new state, computed in the time dtype) with each leaf stored in the dtype of the
    matching leaf of ``old`` (the state before the step). A float dtype narrower than float32 is reached by
    stochastic rounding: to the lower or upper neighbour of x with the probabilities that make E[x'] = x.
    Rounding to nearest drops every increment under half a unit in the last place: 1000 Euler steps of a
    bfloat16 state on a 2-d mixture then end near their start (mean exact log-likelihood -4.31, against
    -2.59 in float32 and -2.61 rounded stochastically). Other dtypes round to nearest, without random bits.
    ``key``: the step's key; the rounding draws from a stream folded out of it."""
    leaves, tree = jax.tree.flatten(new)

    def store(i, leaf, dtype):
        if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32 and leaf.dtype != dtype:
            leaf_key = jax.random.fold_in(jax.random.fold_in(key, _ROUNDING_STREAM), i)
            return _stochastic_round(leaf_key, leaf, dtype)
        return leaf.astype(dtype)

    return tree.unflatten([store(i, leaf, jnp.result_type(old_leaf))
                           for i, (leaf, old_leaf) in enumerate(zip(leaves, tree.flatten_up_to(old)))])


def _stochastic_round(key, value, dtype) -> jax.Array:
    """``value`` rounded to ``dtype``: its nearest value y, or the neighbour y' of y on the other side of
    ``value`` with probability |value - y| / |y' - y| (unbiased; exact values, inf and nan are kept)."""
    nearest = value.astype(dtype)
    error = value - nearest.astype(value.dtype)
    other = jnp.nextafter(nearest, jnp.where(error > 0, jnp.inf, -jnp.inf).astype(dtype))
    spacing = jnp.abs(other.astype(value.dtype) - nearest.astype(value.dtype))
    take = jax.random.uniform(key, value.shape, value.dtype) * spacing < jnp.abs(error)
    return jnp.where(take, other, nearest)


def grid_times(grid, path: Path | None) -> Callable[[int, jnp.dtype], jax.Array]:
    """``rule(num_steps, state_dtype)`` -> the ``num_steps + 1`` decreasing times in
    ``time_dtype(state_dtype)``, a constant at trace time (concrete even under ``jit``)."""
    if isinstance(grid, (str, Grid)):
        rule = as_grid(grid)
        if rule.kind in _GRIDS_NEEDING_PATH and path is None:
            raise ValueError(f"grid kind {rule.kind!r} is defined through the path's log-SNR; pass path= "
                             f"(e.g. itscale.paths.vp()) or use grid='uniform' / 'quadratic'")
        return lambda n, state_dtype: rule.times(n, path, dtype=time_dtype(state_dtype))
    times = np.asarray(check_times("grid", grid))

    def explicit(n, state_dtype):
        if n != times.shape[0] - 1:
            raise ValueError(f"grid holds {times.shape[0]} times, i.e. {times.shape[0] - 1} steps; run the "
                             f"sampler with num_steps={times.shape[0] - 1}, got num_steps={n}")
        with jax.ensure_compile_time_eval():
            return jnp.asarray(times, time_dtype(state_dtype))

    return explicit
