"""itscale.search: width-axis strategies over any sampler, continuous or token.

Resampling and ESS (:mod:`~itscale.search.resampling`), resampling a state in place
(:func:`resample_in_place`: only the slots of particles without offspring are written),
Feynman–Kac potentials (:mod:`~itscale.search.potentials`), SMC / FK steering (:func:`smc`),
best-of-N (:func:`best_of_n`), the one budget split of every strategy (:func:`plan_width`,
:class:`SearchSplit`) and its one output type (:class:`SearchOutput`), offspring allocation for tree
search (:func:`apportion`, :func:`offspring_slots`), majority and reward-weighted voting, and the
pass@k / coverage-law estimators.
"""

from itscale.search import potentials, resampling
from itscale.search.allocation import Slots, apportion, offspring_slots
from itscale.search.best_of_n import best_of_n
from itscale.search.children import ChildrenParams
from itscale.search.code import code
from itscale.search.coverage import CoverageLaw, fit_coverage_law, pass_at_k
from itscale.search.in_place import in_place_ancestors, in_place_order, resample_in_place
from itscale.search.resampling import (RESAMPLERS, all_impossible, ess, log_mean_exp, log_normalize,
                                       multinomial, resampler, residual, stratified, systematic)
from itscale.search.output import SearchOutput, search_output
from itscale.search.rbf import RBFParams, rbf
from itscale.search.smc import SMCOutput, SMCParams, SMCState, smc
from itscale.search.split import SearchSplit, declared_nfe_per_step, plan_width
from itscale.search.svdd import svdd
from itscale.search.voting import NO_ANSWER, Vote, majority_vote, weighted_vote

__all__ = [
    "NO_ANSWER", "RESAMPLERS", "ChildrenParams", "CoverageLaw", "RBFParams", "SearchOutput", "SearchSplit", "SMCOutput", "SMCParams",
    "SMCState", "Slots", "Vote", "all_impossible", "apportion", "best_of_n", "code", "declared_nfe_per_step", "ess", "fit_coverage_law",
    "in_place_ancestors", "in_place_order", "log_mean_exp", "log_normalize", "majority_vote", "multinomial",
    "offspring_slots", "pass_at_k", "plan_width", "potentials", "rbf", "resample_in_place", "resampler", "resampling", "residual",
    "search_output", "smc", "stratified", "svdd", "systematic", "weighted_vote",
]
