"""candidate_answers: answers extracted from search candidates (any leading axes) feed the votes of
its.search; dead slots never vote."""

import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.verifiers import arithmetic


def _candidates(texts):
    """A Generation of shape (1, n, L) holding the texts as full sequences."""
    tokens = arithmetic.encode(texts, length=16, align="left")[None]
    n = tokens.shape[1]
    lengths = jnp.full((1, n), 16, jnp.int32)
    zeros = jnp.zeros(tokens.shape, jnp.float32)
    return its.tokens.Generation(tokens, zeros, zeros, lengths, jnp.full((1, n), 6, jnp.int32),
                                 jnp.ones((1, n), bool))


def test_answers_feed_majority_and_weighted_votes_and_dead_slots_never_vote():
    candidates = _candidates(["12+39=#51.", "12+39=#50.", "12+39=#50.", "12+39=#5", "12+39=#51."])
    answers = its.tokens.candidate_answers(candidates, arithmetic.extract_answer)
    np.testing.assert_array_equal(answers, [[51, 50, 50, its.search.NO_ANSWER, 51]])
    assert int(its.search.majority_vote(answers).answer[0]) == 50          # tie 2-2: smallest id
    live = jnp.array([[True, True, False, True, True]])                       # slot 2 is a dead slot
    masked = its.tokens.candidate_answers(candidates, arithmetic.extract_answer, live)
    assert int(its.search.majority_vote(masked).answer[0]) == 51
    weights = jnp.array([[0.9, 0.2, 0.2, 0.5, 0.1]])
    vote = its.search.weighted_vote(masked, weights)
    assert int(vote.answer[0]) == 51 and float(vote.tally[0]) == pytest.approx(1.0)


def test_answer_extraction_errors():
    candidates = _candidates(["12+39=#51."])
    with pytest.raises(TypeError, match="Generation"):
        its.tokens.candidate_answers(candidates.tokens, arithmetic.extract_answer)
    with pytest.raises(ValueError, match="extract_answer"):
        its.tokens.candidate_answers(candidates, lambda tokens: tokens)
