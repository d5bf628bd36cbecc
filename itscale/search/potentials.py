"""Feynman–Kac potentials built from intermediate rewards r_t = r(preview(x_t)).

Singhal et al. 2025, "A general framework for inference-time scaling and steering of diffusion
models" (FK steering, arXiv 2501.06848, §3). The SMC target is p(x_0) exp(λ r(x_0)) / Z when the
product of all potentials along a path equals exp(λ r(x_0)). Each potential is written as the
cumulative log-potential Ψ_t = Σ_{s ≥ t} log G_s it has applied so far (steps run t = T, ..., 0),
updated from a running statistic s_t of the rewards seen by the particle:

============  ================================  ==========================================
name          G_t                               Ψ_t
============  ================================  ==========================================
difference    exp(λ (r_t − r_{t+1}))            λ r_t                 (s_t = r_t)
max           exp(λ max_{s ≥ t} r_s)            Ψ_{t+1} + λ s_t       (s_t = max(s_{t+1}, r_t))
sum           exp(λ Σ_{s ≥ t} r_s)              Ψ_{t+1} + λ s_t       (s_t = s_{t+1} + r_t)
immediate     exp(λ r_t)                        Ψ_{t+1} + λ r_t       (s_t = r_t)
============  ================================  ==========================================

At the final step every potential uses G_0 = exp(λ r(x_0) − Ψ_1), so Ψ_0 = λ r(x_0) and the product
of all potentials is exactly exp(λ r(x_0)) for all four: the SMC target and its log Z are the same
whichever is chosen, only the variance differs. ``difference`` needs no correction (it telescopes);
``max``/``sum``/``immediate`` get it from the final potential, as in FK steering's G_0. The incremental
log-weight of a step is Ψ_t − Ψ_{t+1}.

A reward of ``-inf`` marks an impossible particle: λ·(−inf) is read as −inf whatever λ (so λ = 0
still excludes it), and a particle whose Ψ is −inf keeps weight 0 (increment −inf) from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks


def tilt(lam, reward) -> jax.Array:
    """λ·r with λ·(−inf) = −inf for every λ (an impossible particle stays impossible)."""
    reward = jnp.asarray(reward)
    return jnp.where(reward > -jnp.inf, lam * reward, -jnp.inf).astype(reward.dtype)


class PotentialState(NamedTuple):
    """Per-particle running reward statistic ``s_t`` and cumulative log-potential ``Ψ_t``."""

    statistic: jax.Array
    log_potential: jax.Array


def _difference(previous: PotentialState, reward, lam) -> PotentialState:
    return PotentialState(reward, tilt(lam, reward))


def _max(previous: PotentialState, reward, lam) -> PotentialState:
    statistic = jnp.maximum(previous.statistic, reward)
    return PotentialState(statistic, previous.log_potential + tilt(lam, statistic))


def _sum(previous: PotentialState, reward, lam) -> PotentialState:
    statistic = previous.statistic + reward
    return PotentialState(statistic, previous.log_potential + tilt(lam, statistic))


def _immediate(previous: PotentialState, reward, lam) -> PotentialState:
    return PotentialState(reward, previous.log_potential + tilt(lam, reward))


POTENTIALS: dict[str, Callable[[PotentialState, jax.Array, jax.Array], PotentialState]] = {
    "difference": _difference,
    "max": _max,
    "sum": _sum,
    "immediate": _immediate,
}


def potential(name: str) -> Callable[[PotentialState, jax.Array, jax.Array], PotentialState]:
    """The update ``(previous, reward, lam) -> PotentialState`` of the potential called ``name``."""
    return POTENTIALS[checks.choice("potential", name, POTENTIALS)]


def initial(name: str, num_particles: int, dtype) -> PotentialState:
    """Before the first step: Ψ = 0 (empty product); statistic −inf for ``max``, else 0."""
    start = -jnp.inf if name == "max" else 0.0
    return PotentialState(jnp.full((num_particles,), start, dtype), jnp.zeros((num_particles,), dtype))


def final(reward, lam) -> PotentialState:
    """Final step: Ψ_0 = λ r(x_0), whatever the potential (the product condition)."""
    return PotentialState(reward, tilt(lam, reward))


def increment(previous: PotentialState, current: PotentialState, alive) -> jax.Array:
    """Incremental log-weight Ψ_t − Ψ_{t+1} of particles that are ``alive`` (weight > 0, hence finite
    Ψ_{t+1}); −inf for the others, which stay impossible (never NaN)."""
    safe_previous = jnp.where(alive, previous.log_potential, jnp.zeros_like(previous.log_potential))
    return jnp.where(alive, current.log_potential - safe_previous, -jnp.inf)
