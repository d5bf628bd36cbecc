"""Majority vote and reward-weighted vote over candidate answers (self-consistency).

Self-consistency (Wang et al. 2023, arXiv 2203.11171) returns the most frequent answer among n
candidates; the reward-weighted vote (Li et al. 2023, arXiv 2206.02336; Snell et al. 2024,
arXiv 2408.03314) returns argmax_a Σ_i w_i [a_i = a]. Answers are integer ids on the last axis,
shape (..., n), typically produced by an answer-extraction function (pass ``extract_answer`` to apply
one to the raw candidates first); :data:`NO_ANSWER` (−1) marks a candidate without an answer and is
excluded from the vote. Tallies compare every pair of candidates (O(n²), no vocabulary of answers
needed), so any integer ids work.

Ties: among answers with the largest tally the *smallest answer id* wins, so the result does not
depend on the order of the candidates. With no valid answer the result is NO_ANSWER with tally 0.
Weights should be nonnegative; a NaN weight counts as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

NO_ANSWER = -1


class Vote(NamedTuple):
    """answer (...): the winning id or NO_ANSWER; tally: its total weight (count for majority);
    share: tally / total weight of valid candidates (0 with none); num_valid: candidates with an answer."""

    answer: jax.Array
    tally: jax.Array
    share: jax.Array
    num_valid: jax.Array


def _answers(candidates: Any, extract_answer: Callable | None) -> jax.Array:
    answers = jnp.asarray(candidates if extract_answer is None else extract_answer(candidates))
    if not jnp.issubdtype(answers.dtype, jnp.integer):
        raise TypeError(f"answers must be integer ids of shape (..., n) (use extract_answer to map outputs "
                        f"to ids, {NO_ANSWER} for no answer), got dtype {answers.dtype}")
    if answers.ndim < 1:
        raise ValueError("answers must have a candidate axis (last axis), got a scalar")
    return answers


def _vote(answers: jax.Array, weights: jax.Array) -> Vote:
    valid = answers != NO_ANSWER
    weights = jnp.where(valid & ~jnp.isnan(weights), weights, jnp.zeros_like(weights))
    same = answers[..., :, None] == answers[..., None, :]                       # (..., n, n)
    tallies = jnp.sum(jnp.where(same, weights[..., None, :], 0), axis=-1)          # (..., n)
    tallies = jnp.where(valid, tallies, -jnp.inf)
    best = jnp.max(tallies, axis=-1, keepdims=True)
    largest_id = jnp.iinfo(answers.dtype).max
    winner = jnp.min(jnp.where(valid & (tallies == best), answers, largest_id), axis=-1)
    any_valid = jnp.any(valid, axis=-1)
    tally = jnp.where(any_valid, best[..., 0], jnp.zeros_like(best[..., 0]))
    total = jnp.sum(weights, axis=-1)
    share = jnp.where(total > 0, tally / jnp.where(total > 0, total, 1), jnp.zeros_like(tally))
    return Vote(answer=jnp.where(any_valid, winner, NO_ANSWER).astype(answers.dtype), tally=tally,
                share=share, num_valid=jnp.sum(valid, axis=-1, dtype=jnp.int32))


def majority_vote(candidates, *, extract_answer: Callable | None = None) -> Vote:
    """The most frequent answer along the last axis (ties: smallest id; NO_ANSWER excluded)."""
    answers = _answers(candidates, extract_answer)
    return _vote(answers, jnp.ones(answers.shape, jnp.result_type(float)))


def weighted_vote(candidates, weights, *, extract_answer: Callable | None = None) -> Vote:
    """argmax_a Σ_i weights_i [answer_i = a] along the last axis (ties: smallest id)."""
    answers = _answers(candidates, extract_answer)
    weights = jnp.asarray(weights)
    if weights.shape != answers.shape:
        raise ValueError(f"weights must have the answers' shape {answers.shape}, got {weights.shape}")
    return _vote(answers, weights.astype(jnp.result_type(weights, float)))
