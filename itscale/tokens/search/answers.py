"""Answers of generated sequences for voting: the token adapter of :func:`itscale.search.majority_vote`
and :func:`itscale.search.weighted_vote` (self-consistency, Wang et al. 2023, arXiv 2203.11171;
PRM-weighted vote, Snell et al. 2024, arXiv 2408.03314).

``extract_answer(tokens (rows, L)) -> ids (rows,)`` (e.g. ``itscale.verifiers.arithmetic.extract_answer``)
is applied to the candidates' tokens whatever their leading axes ((batch, n) for best-of-N, tree
search and SMC outputs); candidates that are not ``live`` (dead slots of a search) answer
:data:`itscale.search.NO_ANSWER`, so they never enter a vote.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from itscale.core import checks
from itscale.search.voting import NO_ANSWER
from itscale.tokens.sequences import Generation


def candidate_answers(candidates: Generation, extract_answer: Callable, live=None) -> jnp.ndarray:
    """Integer answer ids of ``candidates`` (Generation leaves (..., n, L)), shape (..., n)."""
    if not isinstance(candidates, Generation):
        raise TypeError(f"candidates must be an itscale.tokens.Generation, got {type(candidates).__name__}")
    tokens = checks.int_array("candidates.tokens", candidates.tokens)
    if tokens.ndim < 2:
        raise ValueError(f"candidates.tokens must have shape (..., n, L), got {tokens.shape}")
    answers = jnp.asarray(extract_answer(tokens.reshape(-1, tokens.shape[-1])))
    if answers.shape != (tokens.size // tokens.shape[-1],):
        raise ValueError(f"extract_answer must map tokens (rows, L) to ids (rows,), got shape "
                         f"{answers.shape}")
    answers = answers.reshape(tokens.shape[:-1])
    return answers if live is None else jnp.where(jnp.asarray(live), answers, NO_ANSWER).astype(answers.dtype)
