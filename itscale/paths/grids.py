"""Time grids: the decreasing times t_max = t_0 > t_1 > ... > t_n = t_min a sampler visits.

Kinds (``frac = i / n``, i = 0..n):

- ``uniform``:   t_i = t_max + frac (t_min - t_max).
- ``quadratic``: t_i = t_min + (t_max - t_min) (1 - frac)^2, steps shrink quadratically towards the data
  end t_min (the "quadratic" schedule of DDIM, Song et al. 2021, arXiv 2010.02502, app. D.3).
- ``karras``:    uniform in s^(1/rho) between s(t_max) and s(t_min), where s = sigma / alpha =
  exp(-lambda / 2) is the EDM noise level of the path (Karras et al. 2022, arXiv 2206.00364, eq. 5;
  for alpha = 1 paths such as ``ve`` and ``edm`` it is sigma itself); times are recovered with
  ``path.t_from_log_snr``.
- ``log_snr``:   uniform in lambda = log(alpha^2 / sigma^2) between lambda(t_max) and lambda(t_min)
  (Lu et al. 2022, DPM-Solver, arXiv 2206.00927).

The endpoints are exactly t_max and t_min. ``karras`` needs alpha(t_max) > 0 and ``log_snr`` also
sigma(t_min) > 0; on paths with alpha(1) = 0 (``linear``, ``vp_cosine``) pass t_max < 1 for them.

A ``Grid`` is taken exactly as given (its field t_min defaults to 1e-3). A kind name given to a refine
sampler (``its.refine.ode(..., grid="uniform")``) is a different default: there ``uniform`` and
``quadratic`` end at t_min = 0 where the model is finite at t = 0 (:func:`itscale.refine.grid_times.
default_t_min`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.core.checks import choice, in_range, positive_int
from itscale.paths.path import Path, as_float

KINDS = ("uniform", "karras", "log_snr", "quadratic")


@dataclasses.dataclass(frozen=True)
class Grid:
    """A time-grid rule; frozen and hashable so it can be a static ``jit`` argument."""

    kind: str = "uniform"
    t_min: float = 1e-3
    t_max: float = 1.0
    rho: float = 7.0

    def __post_init__(self):
        choice("grid kind", self.kind, KINDS)
        t_min = in_range("t_min", self.t_min, 0.0, 1.0)
        t_max = in_range("t_max", self.t_max, 0.0, 1.0)
        if not t_min < t_max:
            raise ValueError(f"t_min must be smaller than t_max = {t_max}, got t_min = {t_min}")
        object.__setattr__(self, "t_min", t_min)
        object.__setattr__(self, "t_max", t_max)
        object.__setattr__(self, "rho", in_range("rho", self.rho, 0.0, float("inf"), inclusive=False))

    def times(self, num_steps: int, path: Path | None = None, *, dtype=None) -> jax.Array:
        """The ``num_steps + 1`` decreasing times from t_max to t_min, in ``dtype`` (default: jax's default
        float, float64 when x64 is on). ``path`` is required by the ``karras`` and ``log_snr`` kinds."""
        n = positive_int("num_steps", num_steps)
        dtype = jax.dtypes.canonicalize_dtype(float if dtype is None else dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        with jax.ensure_compile_time_eval():  # the grid is static: build it as a constant even under jit
            frac = jnp.arange(n + 1, dtype=dtype) / n
            times = self._interior(frac, path, dtype)
            return times.at[0].set(self.t_max).at[-1].set(self.t_min)

    def _interior(self, frac, path, dtype):
        if self.kind == "uniform":
            return self.t_max + frac * (self.t_min - self.t_max)
        if self.kind == "quadratic":
            return self.t_min + (self.t_max - self.t_min) * (1.0 - frac) ** 2
        checks.path("path", path, context=f" for grid kind {self.kind!r}")
        lam_start, lam_end = (float(path.log_snr(jnp.asarray(t, dtype))) for t in (self.t_max, self.t_min))
        if not math.isfinite(lam_start) or (self.kind == "log_snr" and not math.isfinite(lam_end)):
            raise ValueError(
                f"grid kind {self.kind!r} needs a finite log-SNR at its endpoints, but path {path.name!r} "
                f"has "
                f"log_snr(t_max={self.t_max}) = {lam_start} and log_snr(t_min={self.t_min}) = {lam_end}; "
                f"choose t_max < 1 (alpha(t_max) > 0) and t_min > 0 (sigma(t_min) > 0)")
        if self.kind == "log_snr":
            lam = lam_start + frac * (lam_end - lam_start)
        else:
            start, end = math.exp(-lam_start / (2 * self.rho)), math.exp(-lam_end / (2 * self.rho))
            lam = -2.0 * self.rho * jnp.log(start + frac * (end - start))
        return path.t_from_log_snr(lam)


def grid(spec: str | Grid) -> Grid:
    """Coerce a kind name (``"uniform"``, ``"karras"``, ``"log_snr"``, ``"quadratic"``) or a ``Grid``."""
    if isinstance(spec, Grid):
        return spec
    return Grid(choice("grid", spec, KINDS))


def check_times(name: str, times) -> jax.Array:
    """Validate user-given times: a 1-D float array of length >= 2, strictly decreasing, within [0, 1].

    Shapes are checked always; values only when concrete (outside ``jit``).
    """
    times = as_float(times)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 times, got shape {times.shape}")
    if isinstance(times, jax.core.Tracer):
        return times
    values = np.asarray(times)
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{name} must lie within [0, 1], got values in [{values.min()}, {values.max()}]")
    steps = np.diff(values)
    if not np.all(steps < 0):
        bad = int(np.argmax(steps >= 0))
        raise ValueError(f"{name} must be strictly decreasing (t = 1 noise -> t = 0 data), but "
                         f"{name}[{bad}] = {values[bad]} <= {name}[{bad + 1}] = {values[bad + 1]}")
    return times
