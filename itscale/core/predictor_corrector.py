"""``predictor_corrector(predictor, corrector, corrector_steps=k)``: k corrector moves after each step.

Both samplers act on the predictor's state; the corrector's ``step`` receives the same context as the
predictor's step it follows (so it corrects at the time that step reached), as in the
predictor–corrector samplers of Song et al. 2021 (arXiv 2011.13456, Alg. 1). ``params`` is
``(predictor_params, corrector_params)``. NFE adds up: (predictor + k · corrector) per step.
"""

from __future__ import annotations

import jax

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, validate
from itscale.core.weights import takes_models


def _combined_cost(predictor: Sampler, corrector: Sampler, k: int) -> int | None:
    """NFE of one predictor step and ``k`` corrector steps, per row, if both declare theirs."""
    if predictor.nfe_per_step is None or corrector.nfe_per_step is None:
        return None
    return predictor.nfe_per_step + k * corrector.nfe_per_step


@takes_models
def predictor_corrector(predictor: Sampler, corrector: Sampler, *, corrector_steps: int = 1) -> Sampler:
    """Follow every ``predictor`` step with ``corrector_steps`` steps of ``corrector``."""
    for name, s in (("predictor", predictor), ("corrector", corrector)):
        if not isinstance(s, Sampler):
            raise TypeError(f"{name} must be an itscale.Sampler, got {type(s).__name__}")
    k = checks.positive_int("corrector_steps", corrector_steps)

    def init(key, x, params, ctx=None):
        return init_state(predictor, key, x, params[0], ctx)

    def step(key, state, ctx, params):
        predict_key, correct_key = jax.random.split(key)
        state, predictor_info = predictor.step(predict_key, state, ctx, params[0])

        def correct(state, j):
            return corrector.step(jax.random.fold_in(correct_key, j), state, ctx, params[1])

        state, corrector_info = counting.scan(correct, state, jax.numpy.arange(k))
        return state, (predictor_info, jax.tree.map(lambda a: a[-1], corrector_info))

    def check(x, params):
        validate(predictor, x, params[0])
        validate(corrector, x, params[1])

    return Sampler(init, step, predictor.finalize, (predictor.params, corrector.params), prior=predictor.prior,
                   validate=check, nfe_per_step=_combined_cost(predictor, corrector, k))
