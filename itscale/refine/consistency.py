"""``its.refine.consistency``: multistep sampling of a consistency model.

A consistency function f(x_t, t) maps any point of a probability-flow trajectory to its end x₀ (Song et
al. 2023, arXiv 2303.01469). Multistep sampling (their Alg. 1) trades steps for quality on the grid
t_0 = t_max > t_1 > … of ``num_steps`` N: step 0 maps the input noise, x̂ = f(x, t_0); step n >= 1
re-noises the current estimate to time t_n along the path and maps it back,

    x_{t_n} = α(t_n) x̂ + σ(t_n) z,   z ~ N(0, I),   x̂ ← f(x_{t_n}, t_n).

One step is one-shot generation; with an exact f every N gives the exact law, with a learned or
approximate f (e.g. a denoiser's posterior mean) more steps correct its errors: the refinement axis of
consistency models. ``x`` is the noise at t_max, σ(t_max)·z (``prior``). NFE: one call of f per row per
step. ``consistency_fn`` may be a closure, an NNX module or a bound model (weights traced).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.paths.path import Path, expand_time
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.sde import SDEState, check_noise


@takes_models
def consistency(consistency_fn: Callable, path: Path, *, grid="uniform") -> Sampler:
    """Multistep consistency sampling with ``consistency_fn(x_t, t) -> x₀`` on ``path`` (module docstring)."""
    checks.function("consistency_fn", consistency_fn, "consistency_fn(x_t, t) -> x0")
    checks.path("path", path)
    f = counting.counted(consistency_fn)
    times_rule = grid_times(grid, path)

    def init(key, x, params):
        check_noise("x", x)
        return SDEState(x)

    def step(key, state, ctx, params):
        x = state.x
        key_noise, key_round = jax.random.split(key)
        t = jnp.asarray(times_rule(ctx.num_steps, x.dtype))[ctx.step]
        renoised = (expand_time(path.alpha(t), x) * x
                    + expand_time(path.sigma(t), x) * jax.random.normal(key_noise, x.shape, x.dtype))
        x_t = jnp.where(ctx.step == 0, x, renoised.astype(x.dtype))
        x0 = f(x_t, jnp.broadcast_to(t, x.shape[:1]))
        if jnp.shape(x0) != x.shape:
            raise ValueError(f"consistency_fn must return x0 of the state's shape {x.shape}, got {jnp.shape(x0)}")
        return round_like(key_round, SDEState(x0.astype(t.dtype)), state), {}

    return Sampler(init, step, lambda state: state.x, prior=noise_prior(path, grid), nfe_per_step=1)
