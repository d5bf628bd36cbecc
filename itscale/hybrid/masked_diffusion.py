"""Ancestral samplers of masked diffusion: MDLM and ReMDM remasking.

MDLM (Sahoo et al. 2024, arXiv 2406.07524). Step i of K goes from t = 1 − i/K to s = 1 − (i+1)/K.
With one denoiser call x̂ ~ p_θ(x₀ | z_t) per position, a masked position moves to

    q(z_s | z_t = [MASK]) ∝ (α_s − α_t)·p_θ(x₀ | z_t) on tokens,  (1 − α_s) on [MASK],

drawn by Gumbel-max over the V + 1 outcomes (:mod:`itscale.hybrid.gumbel`); unmasked tokens are carried
over. The last step (s = 0, α_s = 1) unmasks every position left.

ReMDM (Wang et al. 2025, arXiv 2503.00307). Decoded tokens are re-masked with probability
σ_t ∈ [0, σ_max], σ_max = min(1, (1 − α_s)/α_t), and a masked position unmasks with probability
(α_s − (1 − σ_t)·α_t)/(1 − α_t) (stays masked with (1 − α_s − σ_t·α_t)/(1 − α_t)), which keeps the
marginals q(z_s | x₀) of MDLM. Schedules of σ_t (η a traced parameter):

* ``"cap"``: σ_t = min(η, σ_max);   * ``"rescale"``: σ_t = η·σ_max;
* ``"loop"``: time is warped so that α runs MDLM's schedule from t = 1 down to ``t_on``, is held at
  α(t_on) for t ∈ [t_off, t_on] while decoded tokens are re-masked with σ_t = min(η, σ_max), and
  reaches α = 1 over [0, t_off]; σ_t = 0 outside the loop. The denoiser sees the warped time.

With σ_t = 0 the ReMDM step is MDLM's, bit for bit (the same arithmetic, the same draws).
Positions given in ``x`` are never re-masked. NFE: one denoiser call per row per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler, StepContext
from itscale.core.weights import takes_models
from itscale.hybrid import masked
from itscale.hybrid.gumbel import gumbel_noise
from itscale.hybrid.mask_schedules import MaskSchedule, mask_schedule
from itscale.tokens.sampling import first_argmax

REMASKING = ("cap", "rescale", "loop")


def grid_times(ctx: StepContext, dtype) -> tuple[jax.Array, jax.Array]:
    """(t, s) = (1 − i/K, 1 − (i + 1)/K) of step i of K."""
    i = ctx.step.astype(dtype)
    return 1.0 - i / ctx.num_steps, 1.0 - (i + 1.0) / ctx.num_steps


def sigma_max(alpha_t: jax.Array, alpha_s: jax.Array) -> jax.Array:
    """min(1, (1 − α_s)/α_t), 1 where α_t = 0."""
    safe = jnp.where(alpha_t > 0, alpha_t, 1.0)
    return jnp.where(alpha_t > 0, jnp.minimum(1.0, (1.0 - alpha_s) / safe), 1.0)


def loop_time(t: jax.Array, t_on: jax.Array, t_off: jax.Array) -> jax.Array:
    """ReMDM-loop's warped time: t above t_on, t_on on [t_off, t_on], t·t_on/t_off below t_off."""
    below = t * t_on / jnp.where(t_off > 0, t_off, 1.0)
    return jnp.where(t >= t_on, t, jnp.where(t >= t_off, t_on, below))


def _sigma_rule(remasking: str) -> Callable:
    """``rule(params, t, s, alpha) -> (u_t, u_s, σ)``: warped times and the re-masking probability."""
    def cap(params, t, s, alpha):
        return t, s, jnp.minimum(params["eta"], sigma_max(alpha(t), alpha(s)))

    def rescale(params, t, s, alpha):
        return t, s, params["eta"] * sigma_max(alpha(t), alpha(s))

    def loop(params, t, s, alpha):
        u_t, u_s = (loop_time(v, params["t_on"], params["t_off"]) for v in (t, s))
        looping = (t <= params["t_on"]) & (s >= params["t_off"])
        sigma = jnp.minimum(params["eta"], sigma_max(alpha(u_t), alpha(u_s)))
        return u_t, u_s, jnp.where(looping, sigma, 0.0)

    return {"cap": cap, "rescale": rescale, "loop": loop}[remasking]


def _no_remasking(params, t, s, alpha):
    return t, s, jnp.zeros_like(t)


def masked_step(model: masked.Denoiser, schedule: MaskSchedule, rule: Callable, key, state: masked.MaskedState,
                ctx: StepContext, params) -> tuple[masked.MaskedState, dict]:
    """One ReMDM step (MDLM when ``rule`` gives σ = 0); see the module docstring."""
    dtype = state.time.dtype
    t, s = grid_times(ctx, dtype)
    u_t, u_s, sigma = rule(params, t, s, schedule.alpha)
    u_t, u_s, sigma = (jnp.asarray(v, dtype) for v in (u_t, u_s, sigma))
    alpha_t, alpha_s = schedule.alpha(u_t), schedule.alpha(u_s)
    sigma = jnp.clip(sigma, 0.0, sigma_max(alpha_t, alpha_s))
    is_last = ctx.step == ctx.num_steps - 1
    batch, length = state.tokens.shape
    log_p = model(state.tokens, jnp.full((batch,), u_t, dtype))
    vocab = log_p.shape[-1]
    unmask_weight = alpha_s - (1.0 - sigma) * alpha_t
    stay_weight = (1.0 - alpha_s) - sigma * alpha_t
    total = unmask_weight + stay_weight
    p_unmask = jnp.where(is_last | (total <= 0), 1.0,
                         jnp.clip(unmask_weight / jnp.where(total > 0, total, 1.0), 0.0, 1.0))
    # One block of Gumbel noise: V + 1 columns for q(z_s | z_t = [MASK]), 2 for the re-masking coin.
    noise = gumbel_noise(key, (batch, length, vocab + 3), log_p.dtype)
    move = jnp.concatenate([jnp.log(p_unmask) + log_p,
                            jnp.full((batch, length, 1), jnp.log1p(-p_unmask), log_p.dtype)], axis=-1)
    drawn = first_argmax(move + noise[..., :vocab + 1])
    coin = jnp.stack([jnp.log1p(-sigma), jnp.log(sigma)]).astype(log_p.dtype)
    remask_draw = first_argmax(coin + noise[..., vocab + 1:]) == 1
    is_masked = state.tokens == model.mask_id
    ok = masked.possible(log_p)
    unmask = is_masked & ok & (drawn < vocab)
    remask = ~is_masked & ~state.given & remask_draw
    tokens = jnp.where(unmask, drawn, jnp.where(remask, model.mask_id, state.tokens))
    log_probs = jnp.where(unmask, masked.pick(log_p, jnp.minimum(drawn, vocab - 1)),
                          jnp.where(remask, 0.0, jnp.where(is_masked & ~ok, -jnp.inf, state.log_probs)))
    new_state = masked.MaskedState(tokens, state.given, log_probs.astype(dtype), jnp.full((batch,), u_s, dtype))
    info = {"unmasked": jnp.sum(unmask, axis=1, dtype=jnp.int32),
            "remasked": jnp.sum(remask, axis=1, dtype=jnp.int32), "sigma": sigma}
    return new_state, info


def _sampler(denoiser_fn, mask_id, schedule, rule, params, validate) -> Sampler:
    model = masked.denoiser("denoiser_fn", denoiser_fn, mask_id)
    schedule = mask_schedule(schedule)

    def init(key, x, params):
        return masked.start(x, model.mask_id)

    def step(key, state, ctx, params):
        return masked_step(model, schedule, rule, key, state, ctx, params)

    return Sampler(init, step, lambda state: masked.finalize(state, model.mask_id), params, masked.watch,
                   validate=validate, nfe_per_step=1)


@takes_models
def mdlm(denoiser_fn: Callable, *, mask_id: int, schedule: str | MaskSchedule = "log-linear") -> Sampler:
    """MDLM ancestral sampler (see the module docstring).

    Args:
      denoiser_fn: ``denoiser_fn(tokens, t) -> logits`` (:mod:`itscale.hybrid.masked`).
      mask_id: the [MASK] token id (static).
      schedule: ``"log-linear"``, ``"cosine"`` or a :class:`MaskSchedule`.

    Run: ``its.run(sampler, key, x, num_steps=K)`` with ``x`` (batch, L) (``mask_id`` where to generate);
    output :class:`itscale.hybrid.masked.MaskedGeneration`; info: ``unmasked``, ``remasked``, ``sigma``.
    """
    return _sampler(denoiser_fn, mask_id, schedule, _no_remasking, None, masked.check_tokens)


@takes_models
def remdm(denoiser_fn: Callable, *, mask_id: int, remasking: str = "cap", eta: float = 0.02,
          schedule: str | MaskSchedule = "log-linear", t_on: float = 0.55, t_off: float = 0.05) -> Sampler:
    """ReMDM remasking sampler (see the module docstring).

    Args:
      denoiser_fn, mask_id, schedule: as :func:`mdlm`.
      remasking: ``"cap"``, ``"rescale"`` or ``"loop"`` (static).
      eta: default of the traced ``params["eta"]`` in [0, 1].
      t_on, t_off: defaults of the traced ``params["t_on"]``, ``params["t_off"]`` (``"loop"`` only),
        0 <= t_off <= t_on <= 1.
    """
    rule = _sigma_rule(checks.choice("remasking", remasking, REMASKING))
    params = {"eta": checks.in_range("eta", eta, 0.0, 1.0)}
    ranges = {"eta": (0.0, 1.0)}
    if remasking == "loop":
        params["t_on"] = checks.in_range("t_on", t_on, 0.0, 1.0)
        params["t_off"] = checks.in_range("t_off", t_off, 0.0, t_on)
        ranges.update(t_on=(0.0, 1.0), t_off=(0.0, 1.0))
    return _sampler(denoiser_fn, mask_id, schedule, rule, params, masked.validator(**ranges))
