"""itscale.tokens.search: the LM-specific parts of width search, built on :mod:`itscale.search`.

Step-level tree search with a process verifier -- :func:`beam_search` (Snell et al. 2024),
:func:`dvts` (Beeching et al. 2024), :func:`rebase` (Wu et al. 2024): the generic engine
(:mod:`itscale.search.tree`) and its selection rules (:mod:`itscale.search.selection`) on a step
rollout, with the token hooks of :func:`tree_search` -- and SMC over reasoning steps --
:func:`token_smc` (twisted SMC) and :func:`particle_filter` (Puri et al. 2025) -- which are the generic
:func:`itscale.search.smc` on a step rollout. Every strategy takes a static per-query ``nfe_budget``
(token positions through the network), prefills the prompt once, picks its width and reports the split
(:class:`SearchSplit`) in its output; every search returns :class:`itscale.search.SearchOutput`.
:func:`candidate_answers` feeds any of their candidates to the votes of :mod:`itscale.search`.
"""

from itscale.tokens.search.answers import candidate_answers
from itscale.tokens.search.beam import beam_search, keep_top_beams
from itscale.tokens.search.budget import SearchSplit, plan_search
from itscale.tokens.search.dvts import dvts, keep_best_child
from itscale.tokens.search.particle_filter import ParticleFilterParams, log_odds, particle_filter
from itscale.tokens.search.rebase import RebaseParams, balance_children, rebase
from itscale.tokens.search.shared_prompt import replicate_rows, shared_prompt
from itscale.tokens.search.smc import token_smc
from itscale.tokens.search.tree import EXPANSIONS, SearchOutput, SearchParams, TreeState, tree_search

__all__ = [
    "EXPANSIONS", "ParticleFilterParams", "RebaseParams", "SearchOutput", "SearchParams", "SearchSplit",
    "TreeState", "balance_children", "beam_search", "candidate_answers", "dvts",
    "keep_best_child", "keep_top_beams", "log_odds", "particle_filter", "plan_search", "rebase",
    "replicate_rows", "shared_prompt", "token_smc", "tree_search",
]
