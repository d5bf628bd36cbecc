"""``its.refine.convert_path``: run a velocity model trained on one path along another path.

Interpolant conversion. For a target time s, t_s is the source time with the same log-SNR and
c_s = sigma_target(s) / sigma_source(t_s), so that x_target(s) = c_s x_source(t_s) in law; the target
velocity is

    u_target(x, s) = (c_dot / c) x + c t_dot u_source(x / c, t_s)

(Kim et al. 2025, arXiv 2503.19385, sec. 3.2: "interpolant conversion", e.g. linear -> VP before an SDE
sampler). The arithmetic is :func:`itscale.paths.change_path` (SNR matching in
:mod:`itscale.paths.snr_matching`); this is the refine-side entry point, named for what it does to a model,
which checks its arguments and keeps NFE accounting right: the converted function makes exactly one call
of the source model and carries its counted mark, so a sampler wrapping it with ``counted`` counts it once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from itscale.core import checks
from itscale.paths.path import Path
from itscale.paths.snr_matching import change_path


def convert_path(velocity_fn: Callable, source_path: Path, target_path: Path) -> Callable:
    """The velocity ``fn(x, s)`` on ``target_path`` of a model ``velocity_fn(x, t)`` of ``source_path``.

    ``s`` may be a scalar or a ``(batch,)`` vector; t_s has the same shape. Undefined where both paths have
    sigma = 0 (c = 0 / 0, the data end): samplers stop at t_min > 0 by default.
    """
    if not callable(velocity_fn):
        raise TypeError("velocity_fn must be a callable fn(x, t) -> velocity, got "
                        f"{type(velocity_fn).__name__}")
    for name, path in (("source_path", source_path), ("target_path", target_path)):
        checks.path(name, path)
    return functools.update_wrapper(change_path(velocity_fn, source_path, target_path), velocity_fn)
