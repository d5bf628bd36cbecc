"""``its.refine.ddpm``: ancestral sampling, x_s ~ q(x_s | x_t, x0 = x0_hat), on any path.

For s < t, q(x_s | x_t, x0) is Gaussian with (Ho et al. 2020, arXiv 2006.11239, eq. 7; Kingma et al.
2021, arXiv 2107.00630, app. A for any alpha, sigma)

    mean = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps_hat,
    c^2 = sigma_s^2 (1 - alpha_t^2 sigma_s^2 / (alpha_s^2 sigma_t^2)),

which is DDIM's update with eta = 1 (Song et al. 2021, arXiv 2010.02502, eq. 12). It is therefore the
``ddim`` solver of :func:`itscale.refine.ode` with ``params = {"eta": 1.0}`` (``eta`` stays a traced
hyper-parameter: 0 is deterministic DDIM), taking a model of any parameterization. One model call per
step; ``info = {"x0_hat", "log_prob"}`` with log_prob = log N(x_s; mean, c^2 I) per sample. At a time
with sigma_s = 0 the step returns alpha_s x0_hat (c = 0, log_prob 0).
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.paths.path import Path
from itscale.refine.flow_to_sde import counted_velocity
from itscale.refine.ode import ode
from itscale.core.weights import takes_models


@takes_models
def ddpm(model_fn: Callable, path: Path, *, grid="uniform", prediction: str = "velocity") -> Sampler:
    """DDPM ancestral sampler of ``model_fn`` (predicting ``prediction`` on ``path``); params {"eta": 1}."""
    sampler = ode(counted_velocity(model_fn, path, prediction), solver="ddim", grid=grid, path=path)
    return sampler._replace(params={**sampler.params, "eta": 1.0})
