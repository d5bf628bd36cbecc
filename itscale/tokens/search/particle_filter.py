"""Particle filtering with a process reward model (Puri et al. 2025, arXiv 2502.01618, Alg. 1).

At every reasoning step each particle (partial sequence) is extended by the model, scored by a PRM
r ∈ [0, 1], given the weight softmax_i(logit(r_i) / τ) and the particles are resampled (every step
but the last). This is :func:`itscale.tokens.search.token_smc` with reward logit(r), λ = 1/τ, the
``"immediate"`` potential (incremental log-weight λ·logit(r_t) at intermediate steps) and
``ess_threshold = 1``; at the last step the potential's correction makes the final weights those of
the target p(x) · (r / (1 − r))^{1/τ} of the complete sequences (:mod:`itscale.search.potentials`), so
the weighted particles (``output.log_weights``) answer by weighted vote or argmax.

τ > 0 lives in ``params.tau`` (traced: sweeping it never recompiles). r = 0 gives logit −inf (an
impossible particle, never resampled); r = 1 is read as 1 − ε (ε the dtype's epsilon) so that a
certain step keeps a finite weight; r outside [0, 1] or NaN is an invalid verdict (counted in
``output.invalid_rewards``, particle made impossible).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from itscale.core import checks
from itscale.core.sampler import Sampler, init_state
from itscale.search.smc import SMCParams
from itscale.tokens.search.smc import token_smc
from itscale.core.weights import takes_models


class ParticleFilterParams(NamedTuple):
    """Traced hyper-parameters: the rollout's decoding controls and the temperature τ > 0."""

    base: Any
    tau: Any = 1.0


def log_odds(probability) -> jnp.ndarray:
    """logit(r) = log r − log(1 − r), with r = 1 read as 1 − ε; NaN outside [0, 1]."""
    r = jnp.asarray(probability)
    r = jnp.asarray(r, jnp.promote_types(r.dtype, jnp.float32))
    top = 1 - jnp.finfo(r.dtype).eps
    r = jnp.where((r > top) & (r <= 1), top, r)
    inside = (r >= 0) & (r <= 1)
    return jnp.where(inside, jnp.log(r) - jnp.log1p(-jnp.where(inside, r, 0)), jnp.nan)


_check_tau = checks.param_ranges(tau=(float(np.finfo(np.float32).tiny), float("inf")))


@takes_models
def particle_filter(logits_fn: Callable, process_reward_fn: Callable, *, nfe_budget: int, num_steps: int,
                    step_length: int, tau: float = 1.0, separator_id: int | None = None,
                    resample: str = "systematic", **rollout_options) -> Sampler:
    """Particle filtering of ``nfe_budget // (num_steps · step_length)`` particles (after the prompt)
    weighted by softmax(logit(PRM) / τ) and resampled every step; see the module docstring.

    ``process_reward_fn``: ``Generation`` (N rows) -> PRM scores in [0, 1] (N,). Output:
    :class:`itscale.search.SearchOutput` (as :func:`token_smc`); ``params`` =
    ``ParticleFilterParams(base=decoding params, tau)``. Other arguments:
    :func:`itscale.tokens.search.token_smc`.
    """
    checks.function("process_reward_fn", process_reward_fn, "Generation -> scores in [0, 1]")
    checks.in_range("tau", tau, 0.0, float("inf"), inclusive=False)

    def reward(generation):
        return log_odds(process_reward_fn(generation))

    inner = token_smc(logits_fn, reward, nfe_budget=nfe_budget, num_steps=num_steps, step_length=step_length,
                      separator_id=separator_id, potential="immediate", resample=resample, ess_threshold=1.0,
                      lam=1.0 / tau, **rollout_options)

    def as_smc(params: ParticleFilterParams) -> SMCParams:
        lam = 1 / jnp.asarray(params.tau, jnp.result_type(float))
        return SMCParams(params.base, lam, jnp.ones_like(lam))

    def init(key, x, params, ctx=None):
        return init_state(inner, key, x, as_smc(params), ctx)

    def step(key, state, ctx, params):
        return inner.step(key, state, ctx, as_smc(params))

    def check(x, params):
        _check_tau(x, params)
        inner.validate(x, as_smc(params))

    return Sampler(init, step, inner.finalize, ParticleFilterParams(inner.params.base, tau), inner.watch,
                   validate=check)
