"""Masking schedules α(t) of absorbing-state (masked) diffusion: the fraction of unmasked tokens at t.

Each token of x₀ is masked independently by time t with probability 1 − α(t); α decreases from
α(0) = 1 (data) to α(1) = 0 (all [MASK]) (Austin et al. 2021, arXiv 2107.03006; Sahoo et al. 2024,
MDLM, arXiv 2406.07524). Schedules:

* ``"log-linear"``: α(t) = 1 − t (MDLM's log-linear noise σ(t) = −log(1 − t), ε = 0).
* ``"cosine"``: α(t) = cos(π t / 2) (MDLM's cosine schedule, ε = 0).

``time_of(α)`` inverts α (the first-hitting sampler draws unmasking times through it). Values are
clipped to [0, 1], so rounding never leaves the unit interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from itscale.core import checks


class MaskSchedule(NamedTuple):
    """``alpha(t)``: unmasked fraction at time t ∈ [0, 1]; ``time_of(a)``: its inverse."""

    name: str
    alpha: Callable
    time_of: Callable


def _unit(x):
    return jnp.clip(x, 0.0, 1.0)


def _linear_alpha(t):
    return _unit(1.0 - t)


def _cosine_alpha(t):
    return _unit(jnp.cos(0.5 * math.pi * t))


def _cosine_time(a):
    return _unit(jnp.arccos(_unit(a)) * (2.0 / math.pi))


LOG_LINEAR = MaskSchedule("log-linear", _linear_alpha, _linear_alpha)
COSINE = MaskSchedule("cosine", _cosine_alpha, _cosine_time)
SCHEDULES = {"log-linear": LOG_LINEAR, "cosine": COSINE}


def mask_schedule(schedule: str | MaskSchedule) -> MaskSchedule:
    """A :class:`MaskSchedule` from its name (``"log-linear"``, ``"cosine"``) or itself."""
    if isinstance(schedule, MaskSchedule):
        return schedule
    return SCHEDULES[checks.choice("schedule", schedule, SCHEDULES)]
