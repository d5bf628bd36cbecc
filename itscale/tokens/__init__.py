"""itscale.tokens: the sequence axis -- autoregressive rollouts with a KV cache, decoding controls,
parallel decoding (Jacobi, speculative sampling, blockwise parallel decoding) and step-structured generation for process verifiers.

All samplers take ``logits_fn(tokens, cache) -> (logits, cache)`` (``itscale.tokens.model``), run with
``its.run(sampler, key, prompts or (prompts, lengths), num_steps=...)`` and return a
:class:`Generation` (``itscale.tokens.sequences``), extended with per-row statistics by ``jacobi``
(:class:`JacobiGeneration`) and ``speculative`` (:class:`SpeculativeGeneration`).
"""

from itscale.tokens import steps
from itscale.tokens.blockwise import BlockwiseGeneration, blockwise
from itscale.tokens.jacobi import JacobiGeneration, jacobi
from itscale.tokens.model import TokenModel, rewind_lengths, token_model
from itscale.tokens.rollout import RolloutState, rollout
from itscale.tokens.sampling import Decoding, truncated_log_probs
from itscale.tokens.sequences import Generation, Sequences
from itscale.tokens.speculative import SpeculativeGeneration, speculative
from itscale.tokens.steps import step_ends, step_index, step_rollout

__all__ = [
    "BlockwiseGeneration", "Decoding", "Generation", "JacobiGeneration", "RolloutState", "Sequences", "SpeculativeGeneration",
    "TokenModel", "blockwise", "jacobi", "rewind_lengths", "rollout", "speculative", "step_ends", "step_index",
    "step_rollout", "steps", "token_model", "truncated_log_probs",
]

# LM search under an NFE budget (step-level beam search, DVTS, REBASE, token SMC, particle filtering).
from itscale.tokens import search  # noqa: E402
from itscale.tokens.search import (ParticleFilterParams, RebaseParams, SearchOutput, SearchParams,  # noqa: E402
                                   SearchSplit, beam_search, candidate_answers, dvts,
                                   particle_filter, plan_search, rebase, token_smc, tree_search)

__all__ += [
    "ParticleFilterParams", "RebaseParams", "SearchOutput", "SearchParams", "SearchSplit",
    "beam_search", "candidate_answers", "dvts", "particle_filter", "plan_search", "rebase", "search",
    "token_smc", "tree_search",
]
