"""First-hitting sampler of masked diffusion: one token unmasked per step, at its sampled hitting time.

Under the masking schedule α, a position masked at time t stays masked down to s < t with probability
(1 − α_s)/(1 − α_t), independently of the others; with n masked positions the first of them unmasks at
the time s solving (1 − α_s) = (1 − α_t)·u^{1/n}, u ~ U(0, 1), and it is a uniformly chosen one (Zheng et
al. 2024, arXiv 2409.02908). Each step of a row draws its hitting time s, picks a masked
position uniformly, calls the denoiser at (z, s) and draws that position's token from p_θ(x₀ | z_s); the
other positions do not change. Exact in law with a perfect denoiser (the order is independent of the
tokens), and free of the time discretisation of :func:`itscale.hybrid.mdlm`.

A row needs as many steps as it has masked positions (L for an all-[MASK] row); later steps of a
finished row change nothing but still cost its denoiser call (NFE: one per row per step, as the token
rollouts count finished rows). Fewer steps leave positions masked (``output.num_masked``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.hybrid import masked
from itscale.hybrid.gumbel import gumbel_noise
from itscale.hybrid.mask_schedules import MaskSchedule, mask_schedule
from itscale.tokens.sampling import first_argmax


def hitting_time(schedule: MaskSchedule, t: jax.Array, num_masked: jax.Array, u: jax.Array) -> jax.Array:
    """The first unmasking time s of ``num_masked`` positions masked at ``t``: α_s = 1 − (1 − α_t)·u^{1/n}
    (``t`` where n = 0)."""
    n = jnp.maximum(num_masked, 1).astype(t.dtype)
    alpha_s = 1.0 - (1.0 - schedule.alpha(t)) * u ** (1.0 / n)
    return jnp.where(num_masked > 0, jnp.minimum(schedule.time_of(alpha_s), t), t)


@takes_models
def first_hitting(denoiser_fn: Callable, *, mask_id: int, schedule: str | MaskSchedule = "log-linear") -> Sampler:
    """First-hitting sampler (see the module docstring); arguments as :func:`itscale.hybrid.mdlm`.

    Run ``its.run(sampler, key, x, num_steps=K)`` with K >= the number of masked positions of a row to
    finish it; output :class:`itscale.hybrid.masked.MaskedGeneration`; info: ``position`` (the unmasked
    position, −1 when none), ``time`` (the hitting time).
    """
    model = masked.denoiser("denoiser_fn", denoiser_fn, mask_id)
    schedule = mask_schedule(schedule)

    def init(key, x, params):
        return masked.start(x, model.mask_id)

    def step(key, state, ctx, params):
        dtype = state.time.dtype
        batch, length = state.tokens.shape
        is_masked = state.tokens == model.mask_id
        num_masked = jnp.sum(is_masked, axis=1)
        time_key, noise_key = jax.random.split(key)
        s = hitting_time(schedule, state.time, num_masked, masked.uniform(time_key, (batch,), dtype))
        log_p = model(state.tokens, s)
        vocab = log_p.shape[-1]
        # One block of Gumbel noise: V columns per position for its token, one to choose the position.
        noise = gumbel_noise(noise_key, (batch, length, vocab + 1), log_p.dtype)
        position = first_argmax(jnp.where(is_masked, noise[..., vocab], -jnp.inf))
        chosen = (jnp.arange(length) == position[:, None]) & is_masked
        drawn = first_argmax(log_p + noise[..., :vocab])
        write = chosen & masked.possible(log_p)
        tokens = jnp.where(write, drawn, state.tokens)
        log_probs = jnp.where(chosen, masked.pick(log_p, drawn), state.log_probs)
        info = {"position": jnp.where(num_masked > 0, position, -1), "time": s}
        return masked.MaskedState(tokens, state.given, log_probs.astype(dtype), s), info

    return Sampler(init, step, lambda state: masked.finalize(state, model.mask_id), None, masked.watch,
                   validate=masked.check_tokens, nfe_per_step=1)
