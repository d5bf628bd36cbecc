"""``noise_prior(path, grid)``: the law a refinement sampler's initial noise is drawn from.

A refinement sampler starts at the grid's first time t_max, where x = alpha(t_max) x0 + sigma(t_max) eps.
Its prior is the noise part, N(0, sigma(t_max)^2 I): exact where alpha(t_max) = 0 (the linear path at
t = 1) and the usual start elsewhere (VP at t = 1, VE at sigma_max; Song et al. 2021, arXiv 2011.13456,
sec. 3). Without a path the flow convention applies: t = 1 is pure N(0, I) noise. Width transforms call
it (``Sampler.prior``) to give every candidate of a query its own independent noise.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from itscale.paths.grids import Grid, check_times
from itscale.paths.grids import grid as as_grid
from itscale.paths.path import Path


def start_time(grid) -> float:
    """t_max of a grid spec (a kind name, a :class:`itscale.paths.Grid` or an explicit array of times)."""
    if isinstance(grid, (str, Grid)):
        return as_grid(grid).t_max
    return float(np.asarray(check_times("grid", grid))[0])


def noise_prior(path: Path | None, grid) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``prior(key, x) -> sigma(t_max) * z``, z ~ N(0, I) of ``x``'s shape and dtype (sigma = 1 without
    a path)."""
    with jax.ensure_compile_time_eval():     # a constant, also for a sampler built under jit
        scale = 1.0 if path is None else float(path.sigma(np.float64(start_time(grid))))

    def prior(key, x):
        return (scale * jax.random.normal(key, jax.numpy.shape(x), jax.numpy.float32)).astype(x.dtype)

    return prior
