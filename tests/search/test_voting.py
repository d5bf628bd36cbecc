"""Majority and reward-weighted votes, checked by hand: ties, missing answers, extraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itscale import search


def test_majority_vote_by_hand():
    answers = jnp.array([[1, 2, 2, -1],     # 2 wins, 3 valid
                         [3, 3, 4, 4],      # tie 3/4 -> smallest id 3
                         [-1, -1, -1, -1],  # no answer
                         [7, -1, 5, 5]])
    vote = search.majority_vote(answers)
    np.testing.assert_array_equal(vote.answer, [2, 3, search.NO_ANSWER, 5])
    np.testing.assert_allclose(vote.tally, [2, 2, 0, 2])
    np.testing.assert_allclose(vote.share, [2 / 3, 0.5, 0.0, 2 / 3], rtol=1e-6)
    np.testing.assert_array_equal(vote.num_valid, [3, 4, 0, 3])


def test_weighted_vote_by_hand():
    answers = jnp.array([[1, 2, 2, 1, -1]])
    weights = jnp.array([[0.9, 0.3, 0.4, 0.1, 5.0]])  # 1: 1.0, 2: 0.7; the heavy no-answer is excluded
    vote = search.weighted_vote(answers, weights)
    assert int(vote.answer[0]) == 1
    np.testing.assert_allclose(vote.tally, [1.0], rtol=1e-6)
    np.testing.assert_allclose(vote.share, [1.0 / 1.7], rtol=1e-6)
    tie = search.weighted_vote(jnp.array([9, 4]), jnp.array([0.5, 0.5]))
    assert int(tie.answer) == 4
    nan = search.weighted_vote(jnp.array([9, 4]), jnp.array([jnp.nan, 0.1]))
    assert int(nan.answer) == 4


def test_extract_answer_and_errors():
    outputs = jnp.array([[10, 21, 31, 40]])  # answers are the last digit
    vote = search.majority_vote(outputs, extract_answer=lambda o: o % 10)
    assert int(vote.answer[0]) == 0  # 0 (twice) beats 1 (twice) on the smaller id
    with pytest.raises(TypeError, match="integer ids"):
        search.majority_vote(jnp.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="weights must have the answers' shape"):
        search.weighted_vote(jnp.array([1, 2]), jnp.ones(3))


_vote_answer = jax.jit(lambda answers: search.majority_vote(answers).answer)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1, 4), min_size=1, max_size=9), st.randoms(use_true_random=False))
def test_majority_vote_matches_counting_and_ignores_order(answers, rng):
    """Padding with NO_ANSWER to a fixed length changes nothing (and keeps one compilation)."""
    pad = [-1] * (9 - len(answers))
    winner = int(_vote_answer(jnp.array(answers + pad)))
    valid = [a for a in answers if a != -1]
    if not valid:
        assert winner == -1
        return
    counts = {a: valid.count(a) for a in set(valid)}
    best = max(counts.values())
    assert winner == min(a for a, c in counts.items() if c == best)
    shuffled = answers + pad
    rng.shuffle(shuffled)
    assert int(_vote_answer(jnp.array(shuffled))) == winner
