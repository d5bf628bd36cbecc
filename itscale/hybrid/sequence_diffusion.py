"""Continuous sequence diffusion with per-token noise levels: diffusion forcing, rolling and AR-diffusion.

Every sampler here is one engine over a static *schedule*: an array ``times`` (num_steps + 1, M) of path
times, ``times[0] = 1`` (noise) and ``times[-1] = 0`` (data), non-increasing down each column. Step i
calls the sequence denoiser once on the whole sequence with the per-token times ``times[i]`` and moves
token m from t = times[i, m] to s = times[i + 1, m] by the DDIM/DDPM step of that token alone (Song et
al. 2021, arXiv 2010.02502, eq. 12; each token has its own forward process given x, so q(z_s | z_t, x)
factorises over tokens):

    z_s = α_s x̂₀ + √(σ_s² − c²) ε̂ + c ξ,   ε̂ = (z_t − α_t x̂₀)/σ_t,   c = η σ_s √(1 − (α_t σ_s / (σ_t α_s))²),

a token with s = t is left as it is. η (``params["eta"]``, traced) is 1 for the DDPM ancestral step and
0 for deterministic DDIM. Schedules:

* :func:`diffusion_forcing` (Chen et al. 2024, arXiv 2407.01392, pyramid scheduling): integer levels
  K[i, m] = clip(S + ⌊m·u⌋ − i, 0, S) at step i for token m, times K/S; u = 0 is full-sequence
  diffusion (all tokens at one level), u = S autoregressive (token m starts once token m − 1 is clean);
  ``num_steps = S + ⌊(M − 1)·u⌋``.
* :func:`rolling_diffusion` (Ruhe et al. 2024, arXiv 2402.09470): a window of W tokens with noise
  levels rising linearly across it, (w + 1 − r/n)/W for window slot w after r of n sub-steps; every n steps
  the front token is finished and a pure-noise token enters; the sequence starts with the window
  entering the all-noise sequence. It is the pyramid with S = nW, u = n:
  ``num_steps = n·(W + M − 1)``.
* :func:`mar` (Li et al. 2024, arXiv 2406.11838, masked autoregressive generation with a per-token
  diffusion): tokens in a given order (MAR draws a random one), ``tokens_per_step`` at a time, each group
  refined from t = 1 to 0 by n steps while the finished tokens are clean and the rest pure noise; left to
  right one token at a time it is the autoregressive pyramid (u = S = n).
* :func:`ar_diffusion` (Wu et al. 2023, arXiv 2305.09515, sec. 3): token n = m + 1 of N = M has time
  f(n, τ) = clip(t_s + (1 − t_s)(n − n_s)/(2N − n_s), 0, 1) on the line through the moving start point
  (n_s, t_s) = (max(N − τ, 0), max(τ − N, 0)) and the anchor (n_e, t_e) = (2N, 1), with sentence time
  τ = (N + 1)(1 − i/K) at step i of K: earlier tokens are less noisy; any ``num_steps``.

Run with ``its.run(sampler, key, noise, num_steps=...)`` on ``noise`` (batch, M, ...) drawn from the
path's prior at t = 1 (``sampler.prior``). ``denoiser_fn(z, t) -> x̂₀`` takes z (batch, M, ...) and the
per-token times t (M,) and predicts the clean sequence (e.g. :meth:`LinearGaussianSSM.denoiser`, exact).
One NFE per row per step (the whole sequence in one call). The output is the sequence at t = 0;
``info = {"x0_hat", "log_prob"}``, log_prob = Σ over moving tokens of log N(z_s; mean, c² I) per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, StepContext
from itscale.core.weights import takes_models
from itscale.paths.path import Path
from itscale.refine.prior import noise_prior
from itscale.refine.sde import check_noise

_check_params = checks.param_ranges(eta=(0.0, 1.0))


class SequenceState(NamedTuple):
    z: jax.Array


# ---- schedules: static numpy arrays (num_steps + 1, M) -----------------------------------------------
def pyramid_steps(levels: int, uncertainty: float, length: int) -> int:
    """Number of steps of the pyramid schedule: S + ⌊(M − 1)·u⌋."""
    return levels + math.floor((length - 1) * uncertainty)


def pyramid_levels(levels: int, uncertainty: float, length: int) -> np.ndarray:
    """Integer levels K[i, m] = clip(S + ⌊m·u⌋ − i, 0, S), i = 0 … S + ⌊(M − 1)u⌋ (Chen et al. 2024)."""
    checks.positive_int("levels", levels)
    checks.positive_int("length", length)
    if not uncertainty >= 0:
        raise ValueError(f"uncertainty must be >= 0 (0: full-sequence, levels: autoregressive), got {uncertainty}")
    rows = np.arange(pyramid_steps(levels, uncertainty, length) + 1)[:, None]
    offsets = np.floor(np.arange(length) * uncertainty).astype(np.int64)
    return np.clip(levels + offsets[None, :] - rows, 0, levels)


def ar_diffusion_times(num_steps: int, length: int) -> np.ndarray:
    """AR-diffusion per-token times f(n, τ_i) (module docstring), (num_steps + 1, M)."""
    checks.positive_int("num_steps", num_steps)
    n_tokens = float(length)
    tau = (n_tokens + 1.0) * (1.0 - np.arange(num_steps + 1) / num_steps)[:, None]
    n_start, t_start = np.maximum(n_tokens - tau, 0.0), np.maximum(tau - n_tokens, 0.0)
    n = np.arange(1, length + 1)[None, :]
    return np.clip(t_start + (1.0 - t_start) * (n - n_start) / (2 * n_tokens - n_start), 0.0, 1.0)


def mar_times(order, steps_per_token: int, tokens_per_step: int = 1) -> np.ndarray:
    """MAR's per-token times (module docstring), (K·n + 1, M) for K = ⌈M / tokens_per_step⌉ groups of
    ``order`` and n = ``steps_per_token``: group k runs from t = 1 to 0 over steps k·n … (k + 1)·n, earlier
    groups are clean and later ones pure noise."""
    order = np.asarray(order)
    length = order.size
    if order.ndim != 1 or order.dtype.kind not in "iu" or sorted(order.tolist()) != list(range(length)):
        raise ValueError(f"order must be a permutation of 0 … M − 1 (the tokens' generation order), got "
                         f"{order.tolist()}")
    n = checks.positive_int("steps_per_token", steps_per_token)
    group = np.empty(length, np.int64)
    group[order] = np.arange(length) // checks.positive_int("tokens_per_step", tokens_per_step)
    rows = np.arange((group.max() + 1) * n + 1)[:, None]
    return np.clip(((group[None, :] + 1) * n - rows) / n, 0.0, 1.0)


def _check_steps(num_steps: int, required: int, how: str) -> None:
    if num_steps != required:
        raise ValueError(f"num_steps must be {required} for this schedule ({how}), got {num_steps}")


# ---- the engine --------------------------------------------------------------------------------------
def token_move(path: Path, key, z, x0_hat, t, s, eta):
    """Per-token DDIM/DDPM step from times ``t`` to ``s`` ((M,) each); returns ``(z_s, log_prob (batch,))``."""
    shape = (1, z.shape[1]) + (1,) * (z.ndim - 2)
    t, s = t.reshape(shape), s.reshape(shape)
    moving = s < t
    alpha_t, sigma_t, alpha_s, sigma_s = path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)
    eps_hat = (z - alpha_t * x0_hat) / jnp.where(moving, sigma_t, 1.0)
    rho = alpha_t * sigma_s / jnp.where(moving, sigma_t * alpha_s, 1.0)
    c = jnp.where(moving, eta * sigma_s * jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0)), 0.0)
    mean = alpha_s * x0_hat + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * eps_hat
    noise = jax.random.normal(key, z.shape, z.dtype)
    z_s = jnp.where(moving, mean + c * noise, z)
    dims = math.prod(z.shape[2:])
    per_token = -0.5 * jnp.sum((noise**2).reshape(z.shape[:2] + (-1,)), axis=-1) \
        - dims * (jnp.log(jnp.where(c > 0, c, 1.0)) + 0.5 * math.log(2 * math.pi)).reshape(1, -1)
    log_prob = jnp.sum(jnp.where((c > 0).reshape(1, -1), per_token, 0.0), axis=1)
    return z_s, log_prob


def scheduled(denoiser_fn: Callable, path: Path, schedule: Callable[[int, int], np.ndarray]) -> Sampler:
    """The per-token sampler of ``denoiser_fn`` over ``schedule(num_steps, M) -> times (num_steps + 1, M)``
    (module docstring); params ``{"eta": 1.0}``."""
    model = counting.counted(denoiser_fn)

    def times_of(ctx: StepContext, z) -> jax.Array:
        times = schedule(ctx.num_steps, z.shape[1])
        return jnp.asarray(times, jnp.promote_types(z.dtype, jnp.float32))

    def init(key, x, params, ctx=None):
        check_noise("x", x)
        if x.ndim < 3:
            raise ValueError(f"x must have shape (batch, M, ...) (a sequence of M tokens), got {x.shape}")
        if ctx is not None:
            schedule(ctx.num_steps, x.shape[1])          # a bad num_steps raises before any compute
        return SequenceState(x)

    def step(key, state, ctx, params):
        times = times_of(ctx, state.z)
        t, s = times[ctx.step], times[ctx.step + 1]
        z = state.z.astype(t.dtype)
        x0_hat = model(state.z, t).astype(t.dtype)
        z_s, log_prob = token_move(path, key, z, x0_hat, t, s, jnp.asarray(params["eta"], t.dtype))
        return SequenceState(z_s.astype(state.z.dtype)), {"x0_hat": x0_hat, "log_prob": log_prob}

    return Sampler(init, step, lambda state: state.z, {"eta": 1.0}, prior=noise_prior(path, "uniform"),
                   validate=_check_params, nfe_per_step=1)


@takes_models
def diffusion_forcing(denoiser_fn: Callable, path: Path, *, levels: int, uncertainty: float) -> Sampler:
    """Diffusion forcing with the pyramid schedule of ``levels`` S and ``uncertainty`` u (module docstring);
    run with ``num_steps = pyramid_steps(levels, uncertainty, M)``."""
    checks.positive_int("levels", levels)
    pyramid_levels(levels, uncertainty, 1)

    def schedule(num_steps, length):
        _check_steps(num_steps, pyramid_steps(levels, uncertainty, length),
                     f"levels={levels} + floor((M - 1) * uncertainty) with M={length}, uncertainty={uncertainty}")
        return pyramid_levels(levels, uncertainty, length) / levels

    return scheduled(denoiser_fn, path, schedule)


@takes_models
def rolling_diffusion(denoiser_fn: Callable, path: Path, *, window: int, steps_per_token: int = 1) -> Sampler:
    """Rolling diffusion over a window of ``window`` W tokens, ``steps_per_token`` n steps per shift (module
    docstring); run with ``num_steps = n·(W + M − 1)``."""
    checks.positive_int("window", window)
    checks.positive_int("steps_per_token", steps_per_token)
    levels = window * steps_per_token

    def schedule(num_steps, length):
        _check_steps(num_steps, steps_per_token * (window + length - 1),
                     f"steps_per_token * (window + M - 1) with M={length}")
        return pyramid_levels(levels, steps_per_token, length) / levels

    return scheduled(denoiser_fn, path, schedule)


@takes_models
def ar_diffusion(denoiser_fn: Callable, path: Path) -> Sampler:
    """AR-diffusion (Wu et al. 2023): earlier tokens less noisy on a moving line of per-token times
    (module docstring); any ``num_steps``."""
    return scheduled(denoiser_fn, path, ar_diffusion_times)


@takes_models
def mar(denoiser_fn: Callable, path: Path, *, steps_per_token: int, order=None, tokens_per_step: int = 1) -> Sampler:
    """Masked autoregressive generation (Li et al. 2024, MAR) of continuous tokens: groups of
    ``tokens_per_step`` tokens in ``order`` (a static permutation, e.g. a random one; default left to right),
    each group refined by ``steps_per_token`` diffusion steps given the finished ones (module docstring);
    run with ``num_steps = steps_per_token · ⌈M / tokens_per_step⌉``."""
    n = checks.positive_int("steps_per_token", steps_per_token)
    size = checks.positive_int("tokens_per_step", tokens_per_step)
    if order is not None:
        mar_times(order, n, size)                       # a bad order raises here, before any compute

    def schedule(num_steps, length):
        times = mar_times(np.arange(length) if order is None else order, n, size)
        if times.shape[1] != length:
            raise ValueError(f"order has {times.shape[1]} tokens but the sequence has M={length}")
        _check_steps(num_steps, len(times) - 1, f"steps_per_token * ceil(M / tokens_per_step) with M={length}")
        return times

    return scheduled(denoiser_fn, path, schedule)
