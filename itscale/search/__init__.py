"""itscale.search: width-axis strategies over any sampler, continuous or token.

Resampling and ESS (:mod:`~itscale.search.resampling`), Feynman–Kac potentials
(:mod:`~itscale.search.potentials`), SMC / FK steering (:func:`smc`), best-of-N (:func:`best_of_n`),
majority and reward-weighted voting, and the pass@k / coverage estimators.
"""

from itscale.search import potentials, resampling
from itscale.search.resampling import (RESAMPLERS, all_impossible, ess, log_mean_exp, log_normalize,
                                       multinomial, resampler, residual, stratified, systematic)
from itscale.search.smc import SMCOutput, SMCParams, SMCState, smc

__all__ = [
    "RESAMPLERS", "SMCOutput", "SMCParams", "SMCState", "all_impossible", "ess", "log_mean_exp",
    "log_normalize", "multinomial", "potentials", "resampler", "resampling", "residual", "smc",
    "stratified", "systematic",
]
