"""``its.refine.langevin``: the Langevin corrector of predictor–corrector sampling, with a target SNR.

At the time t that the predictor's step reached (grid time t_{i+1} for step i, the context
``its.predictor_corrector`` passes), one unadjusted Langevin move targeting p_t (Song et al. 2021,
arXiv 2011.13456, Alg. 4-5):

    x' = x + eps s(x, t) + sqrt(2 eps) z,    eps = 2 (snr E||z|| / mean_batch ||s(x, t)||)^2,    z ~ N(0, I),

with ``snr`` the traced ``params["snr"]`` (default 0.16, the paper's CIFAR-10 value). As in the paper's
code the score norm is averaged over the batch (a per-sample norm makes eps blow up where the score
vanishes, at the modes); the drawn noise's batch-mean norm is replaced by its expectation
E||z|| = sqrt(2) Gamma((D + 1) / 2) / Gamma(D / 2) (D dimensions per sample), so that eps depends on the
state only and each move is exactly Gaussian, N(x + eps s, 2 eps I), whose log-density goes to
``info["log_prob"]``. Where sigma(t) = 0 the score is undefined and the move is skipped (no model call,
log_prob 0).

Usage: ``its.predictor_corrector(its.refine.sde(u, path), its.refine.langevin(u, path), corrector_steps=k)``
with the same ``grid`` for both. The corrector works on any state with a field ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.paths import conversions
from itscale.paths.path import Path
from itscale.refine.flow_to_sde import counted_velocity
from itscale.refine.gaussian_transition import gaussian_move
from itscale.refine.grid_times import grid_times, round_like
from itscale.refine.prior import noise_prior
from itscale.refine.sde import SDEState, check_noise
from itscale.refine.solvers import Clock, Model
from itscale.core.weights import takes_models

_check_params = checks.param_ranges(snr=(0.0, float("inf")))


def _mean_noise_norm(dims: int) -> float:
    """E||z|| for z ~ N(0, I_dims): the mean of the chi distribution."""
    return math.sqrt(2.0) * math.exp(math.lgamma((dims + 1) / 2) - math.lgamma(dims / 2))


@takes_models
def langevin(model_fn: Callable, path: Path, *, grid="uniform", prediction: str = "velocity") -> Sampler:
    """Langevin corrector for ``model_fn`` (predicting ``prediction`` on ``path``); params {"snr": 0.16}."""
    model = Model(counted_velocity(model_fn, path, prediction), path)
    times_rule = grid_times(grid, path)

    def move(operands):
        key, x, t, snr = operands
        u = model.velocity(x, t)
        score = conversions.score_from_velocity(path, u, x, t).astype(t.dtype)
        score_norm = jnp.mean(jnp.sqrt(jnp.sum(score**2, axis=tuple(range(1, x.ndim)))))
        step_size = 2.0 * (snr * _mean_noise_norm(math.prod(x.shape[1:])) / score_norm) ** 2
        x_new, log_prob = gaussian_move(key, x + step_size * score, jnp.sqrt(2.0 * step_size))
        return x_new, {"x0_hat": model.x0(u, x, t), "log_prob": log_prob}

    def skip(operands):
        _, x, t, _ = operands
        return x.astype(t.dtype), {"x0_hat": x, "log_prob": jnp.zeros(x.shape[:1], t.dtype)}

    def init(key, x, params):
        check_noise("x", x)
        return SDEState(x)

    def step(key, state, ctx, params):
        x = state.x
        t = Clock(times_rule(ctx.num_steps, x.dtype), ctx.step).t(1)
        snr = jnp.asarray(params["snr"], t.dtype)
        x, info = counting.cond(path.sigma(t) > 0, move, skip, (key, x, t, snr))
        return round_like(key, state._replace(x=x), state), info

    return Sampler(init, step, lambda state: state.x, {"snr": 0.16}, prior=noise_prior(path, grid),
                   validate=_check_params, nfe_per_step=1)
