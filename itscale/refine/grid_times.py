"""``grid_times(grid, path)``: the rule giving a sampler's ``num_steps + 1`` times from its grid spec.

A grid is a kind name (``"uniform"``, ``"quadratic"``, ``"karras"``, ``"log_snr"``), an
:class:`itscale.paths.Grid`, or an explicit strictly decreasing array of times in [0, 1]. The number
of steps is static, so the times are a constant at trace time. Shared by every refine sampler.
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


def grid_times(grid, path: Path | None) -> Callable[[int, jnp.dtype], jax.Array]:
    """``rule(num_steps, dtype)`` -> the ``num_steps + 1`` decreasing times (a constant at trace time)."""
    if isinstance(grid, (str, Grid)):
        rule = as_grid(grid)
        if rule.kind in _GRIDS_NEEDING_PATH and path is None:
            raise ValueError(f"grid kind {rule.kind!r} is defined through the path's log-SNR; pass path= "
                             f"(e.g. itscale.paths.vp()) or use grid='uniform' / 'quadratic'")
        return lambda n, dtype: rule.times(n, path, dtype=dtype)
    times = np.asarray(check_times("grid", grid))

    def explicit(n, dtype):
        if n != times.shape[0] - 1:
            raise ValueError(f"grid holds {times.shape[0]} times, i.e. {times.shape[0] - 1} steps; run the "
                             f"sampler with num_steps={times.shape[0] - 1}, got num_steps={n}")
        return jnp.asarray(times, dtype)

    return explicit
