"""itscale.search: width-axis strategies over any sampler, continuous or token.

One width layer: every strategy plans a static NFE budget with :func:`plan_width` (a
:class:`SearchSplit`, reported in its output) and returns a :class:`SearchOutput`.

* Candidates: best-of-N (:func:`best_of_n`), random and zero-order search over initial noise
  (:func:`random_search`, :func:`zero_order_search`), search over paths (:func:`path_search`).
* Particles: SMC / FK steering (:func:`smc`, its output :func:`smc_output`), particle-count schedules
  (:func:`scheduled_smc`), the twisted diffusion sampler (:func:`twisted_smc`); Feynman–Kac potentials
  (:mod:`~itscale.search.potentials`), resamplers and ESS (:mod:`~itscale.search.resampling`),
  resampling in place (:func:`resample_in_place`).
* Per-step children: SVDD (:func:`svdd`), CoDe (:func:`code`), Rollover Budget Forcing (:func:`rbf`).
* Trees over any sampler's steps: :func:`tree_search` with beam / DVTS / REBASE rules
  (:func:`beam_search`, :func:`dvts`, :func:`rebase`), offspring allocation (:func:`apportion`,
  :func:`offspring_slots`).
* Answers: majority and reward-weighted voting, pass@k and the coverage law.
"""

from itscale.search import potentials, resampling
from itscale.search.allocation import Slots, apportion, offspring_slots
from itscale.search.best_of_n import best_of_n
from itscale.search.children import ChildrenParams
from itscale.search.code import code
from itscale.search.coverage import CoverageLaw, fit_coverage_law, pass_at_k
from itscale.search.in_place import in_place_ancestors, in_place_order, resample_in_place
from itscale.search.noise_search import ZeroOrderParams, ZeroOrderState, random_search, zero_order_search
from itscale.search.output import SearchOutput, search_output
from itscale.search.particle_schedule import check_schedule, plan_particle_schedule, schedule_nfe, scheduled_smc
from itscale.search.path_search import PathSearchState, path_search
from itscale.search.rbf import RBFParams, rbf
from itscale.search.resampling import (RESAMPLERS, all_impossible, ess, log_mean_exp, log_normalize,
                                       multinomial, resampler, residual, stratified, systematic)
from itscale.search.selection import (RebaseParams, TreeRule, balance_children, beam_search, dvts,
                                      keep_best_child, keep_top_beams, rebase)
from itscale.search.smc import SMCParams, SMCState, smc, smc_output
from itscale.search.split import SearchSplit, declared_nfe_per_step, init_nfe_per_row, plan_width
from itscale.search.svdd import svdd
from itscale.search.tree import SearchParams, TreeHooks, TreeState, tree_search
from itscale.search.twisted import TwistedState, twisted_smc
from itscale.search.voting import NO_ANSWER, Vote, majority_vote, weighted_vote

__all__ = [
    "ChildrenParams", "CoverageLaw", "NO_ANSWER", "PathSearchState", "RBFParams", "RESAMPLERS",
    "RebaseParams", "SMCParams", "SMCState", "SearchOutput", "SearchParams", "SearchSplit", "Slots",
    "TreeHooks", "TreeRule", "TreeState", "TwistedState", "Vote", "ZeroOrderParams", "ZeroOrderState",
    "all_impossible", "apportion", "balance_children", "beam_search", "best_of_n", "check_schedule", "code",
    "declared_nfe_per_step", "dvts", "ess", "fit_coverage_law", "in_place_ancestors", "in_place_order",
    "init_nfe_per_row",
    "keep_best_child", "keep_top_beams", "log_mean_exp", "log_normalize", "majority_vote", "multinomial",
    "offspring_slots", "pass_at_k", "path_search", "plan_particle_schedule", "plan_width", "potentials",
    "random_search", "rbf", "rebase", "resample_in_place", "resampler", "resampling", "residual",
    "schedule_nfe", "scheduled_smc", "search_output", "smc", "smc_output", "stratified", "svdd",
    "systematic", "tree_search", "twisted_smc", "weighted_vote", "zero_order_search"
]
