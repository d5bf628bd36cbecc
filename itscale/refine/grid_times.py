"""``grid_times(grid, path)``: the rule giving a sampler's ``num_steps + 1`` times from its grid spec.

A grid is a kind name (``"uniform"``, ``"quadratic"``, ``"karras"``, ``"log_snr"``), an
:class:`itscale.paths.Grid`, or an explicit strictly decreasing array of times in [0, 1]. The number
of steps is static, so the times are a constant at trace time. Shared by every refine sampler (``ode``,
``sde``, ``ddpm``, ``langevin``, ``restart``, ``diffrax_ode``, ``adaptive``).

Where a grid given by kind name ends (:func:`default_t_min`). The samplers integrate t: 1 -> 0, so a kind
name runs the whole interval where the model is finite at t = 0: t_max = 1 and

* ``"uniform"`` / ``"quadratic"``: t_min = 0 without a path (the flow convention, the linear path) and on
  every path whose velocity is finite at t = 0 (:func:`itscale.refine.solvers.base.singular_end` is False
  there: ``linear``, ``ve``, ``edm``), for a model whose prediction converts to a finite velocity there
  (``prediction``: an x0 prediction does not where sigma(0) = 0; velocity, eps and score predictions do);
  t_min = 1e-3 (``DATA_END_T_MIN``) where the velocity is singular at t = 0 (``vp``, ``vp_cosine``, where
  sigma_dot is infinite), which keeps every model call finite;
* ``"log_snr"`` (needs a finite log-SNR at both ends) and ``"karras"`` (needs alpha(t_max) > 0): the
  :class:`itscale.paths.Grid` defaults, t_min = 1e-3, as before.

An explicit :class:`itscale.paths.Grid` (e.g. ``Grid("uniform")``, whose t_min field defaults to 1e-3) or an
array of times is taken exactly as given. Before this rule every kind name stopped at t_min = 1e-3, which
left an O(1e-3) bias that no step count removes: Heun's error on an exact mixture, against the flow's
x(0), flattened near 1.5e-3 where it now falls as n^-2, below 1e-4 at 64 steps
(``tests/refine/test_default_grid.py``).

Precision. Times, and every solver coefficient derived from them, are computed in
``time_dtype(state dtype)``, at least float32: a bfloat16 grid of 1000 uniform steps holds 255 distinct
times (746 steps of length 0, still counted in NFE). A step computes its new state in that dtype too, and
the sampler stores it back in the state's own dtype (:func:`round_like`, stochastically for bfloat16 and
float16), so a bfloat16 state stays bfloat16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.paths import conversions
from itscale.paths.grids import Grid, check_times
from itscale.paths.grids import grid as as_grid
from itscale.paths.path import Path
from itscale.refine.solvers.base import linear_in_velocity, singular_end

_GRIDS_NEEDING_PATH = ("karras", "log_snr")
DATA_END_T_MIN = 1e-3
"""t_min of a grid given by kind name where the model is not finite at t = 0 (and of karras / log_snr)."""
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


def _finite_at_zero(path: Path, prediction: str) -> bool:
    """Whether a model predicting ``prediction`` on ``path`` gives a finite velocity at t = 0: the path's
    velocity is regular there and the conversion prediction -> velocity (linear in the prediction and x) has
    finite coefficients."""
    with jax.ensure_compile_time_eval():
        zero = np.zeros((1,), np.float32)
        if singular_end(path, zero):
            return False
        if prediction == "velocity":
            return True
        convert = lambda p, value, x, t: conversions.convert(p, value, x, t, source=prediction,  # noqa: E731
                                                             target="velocity")
        return all(bool(np.isfinite(np.asarray(v)).all()) for v in linear_in_velocity(convert, path, zero))


def default_t_min(kind: str, path: Path | None, prediction: str = "velocity") -> float:
    """t_min of the grid kind ``kind`` given by name, on ``path`` (None: the flow convention, the linear
    path), for a model predicting ``prediction`` that the sampler may call at t_min (see the module
    docstring): 0 for ``uniform`` and ``quadratic`` where that model is finite at t = 0, else
    ``DATA_END_T_MIN`` (1e-3); always 1e-3 for ``karras`` and ``log_snr``."""
    checks.choice("prediction", prediction, conversions.PREDICTIONS)
    if kind in _GRIDS_NEEDING_PATH:
        return DATA_END_T_MIN
    if path is None or _finite_at_zero(path, prediction):
        return 0.0
    return DATA_END_T_MIN


def grid_times(grid, path: Path | None,
               prediction: str = "velocity") -> Callable[[int, jnp.dtype], jax.Array]:
    """``rule(num_steps, state_dtype)`` -> the ``num_steps + 1`` decreasing times in
    ``time_dtype(state_dtype)``, a constant at trace time (concrete even under ``jit``).

    ``grid``: a kind name (t_max = 1, t_min = :func:`default_t_min`: 0 for ``uniform`` / ``quadratic``
    where the model is finite at t = 0, else 1e-3), a :class:`itscale.paths.Grid` or an array of times
    (taken exactly). ``prediction``: what the sampler's model predicts, for a sampler that may call it at
    t_min (Runge--Kutta stages landing on t_min); samplers that never call the model at t_min pass
    ``"velocity"`` (the path alone decides)."""
    if isinstance(grid, (str, Grid)):
        rule = as_grid(grid)
        if isinstance(grid, str):
            rule = dataclasses.replace(rule, t_min=default_t_min(rule.kind, path, prediction))
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
