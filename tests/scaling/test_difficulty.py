"""Difficulty from a query's first samples, tiers by quantiles and per-tier telemetry, against hand counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itscale.scaling.difficulty import (agreement_difficulty, answer_agreement, nearest_calibrated_tier,
                                        quantile_edges, quantile_tiers, score_difficulty, score_stats,
                                        tiers_from_edges)
from itscale.scaling.telemetry import query_cost, tier_summary

ANSWERS = jnp.array([[1, 1, 1, 2], [3, 4, 5, 6], [-1, -1, 7, 7], [2, 2, 3, 3]])


def test_answer_agreement_counts_the_majority_of_the_first_k():
    np.testing.assert_allclose(answer_agreement(ANSWERS), [3 / 4, 1 / 4, 2 / 4, 2 / 4])
    # First two: [1, 1], [3, 4], no answers at all, [2, 2].
    np.testing.assert_allclose(answer_agreement(ANSWERS, k=2), [1.0, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(jax.jit(agreement_difficulty, static_argnames="k")(ANSWERS, k=3),
                               [0.0, 2 / 3, 2 / 3, 1 / 3])
    batched = answer_agreement(jnp.stack([ANSWERS, ANSWERS[::-1]]), k=4)       # leading axes batch
    np.testing.assert_allclose(batched[1], answer_agreement(ANSWERS)[::-1])
    with pytest.raises(ValueError, match="k=5"):
        answer_agreement(ANSWERS, k=5)


def test_score_stats_leave_invalid_verdicts_out():
    scores = jnp.array([[1.0, 2.0, 3.0, jnp.nan], [-jnp.inf, jnp.nan, jnp.inf, 5.0],
                        [jnp.nan, -jnp.inf, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0]])
    stats = jax.jit(score_stats, static_argnames="k")(scores, k=3)
    np.testing.assert_allclose(stats.mean, [2.0, -np.inf, 0.0, 4.0])
    np.testing.assert_allclose(stats.variance, [2 / 3, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(stats.num_finite, [3, 0, 1, 3])
    full = score_stats(scores)
    np.testing.assert_allclose(full.mean, [2.0, 5.0, 0.0, 4.0])
    np.testing.assert_allclose(full.variance, [2 / 3, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(score_difficulty(scores, k=3), [-2.0, np.inf, -0.0, -4.0])


def test_quantile_tiers_split_distinct_values_evenly():
    difficulty = jnp.array([5.0, 0.0, 7.0, 2.0, 1.0, 6.0, 3.0, 4.0])
    tiers = jax.jit(quantile_tiers, static_argnums=1)(difficulty, 4)
    np.testing.assert_array_equal(tiers, np.asarray(difficulty).astype(int) // 2)
    np.testing.assert_allclose(quantile_edges(difficulty, 4), [1.75, 3.5, 5.25])
    np.testing.assert_array_equal(quantile_tiers(difficulty, 1), np.zeros(8, int))
    # Non-finite difficulties: NaN and +inf are the hardest, -inf the easiest.
    odd = jnp.array([jnp.nan, 0.0, -jnp.inf, 1.0, jnp.inf, 0.5])
    np.testing.assert_array_equal(quantile_tiers(odd, 3), [2, 0, 0, 1, 2, 1])
    # Fixed edges from a calibration set apply to new queries.
    fixed = tiers_from_edges(jnp.array([-1.0, 1.75, 1.76, 100.0]), jnp.array([1.75, 3.5]))
    np.testing.assert_array_equal(fixed, [0, 0, 1, 2])
    with pytest.raises(ValueError, match="num_tiers"):
        quantile_tiers(difficulty, 0)


def test_query_cost_and_tier_summary():
    cost = query_cost(jnp.array([1, 4, 8]), jnp.array([10, 10, 20]), nfe_per_step=2, flops_per_nfe=3.0)
    np.testing.assert_array_equal(cost.nfe, [20, 80, 320])
    np.testing.assert_array_equal(cost.depth, [20, 20, 40])                    # width adds no depth
    np.testing.assert_allclose(cost.flops, [60.0, 240.0, 960.0])
    values = jnp.array([1.0, 2.0, 3.0, 10.0, jnp.nan, 4.0, 7.0])
    tiers = jnp.array([0, 0, 0, 2, 2, 0, 2])
    summarise = jax.jit(tier_summary, static_argnums=2, static_argnames="levels")
    summary = summarise(values, tiers, 3, levels=(0.5, 1.0))
    np.testing.assert_array_equal(summary.count, [4, 0, 2])
    np.testing.assert_allclose(summary.mean, [2.5, np.nan, 8.5])
    np.testing.assert_allclose(summary.quantiles, [[np.quantile([1, 2, 3, 4], 0.5), 4.0], [np.nan, np.nan],
                                                   [8.5, 10.0]])


def test_tiers_without_calibration_queries_move_to_the_nearest_calibrated_one():
    # agreement of 4 samples takes 5 values: the top edge is the calibration's largest value, so a
    # harder new query lands in tier 2, which no calibration query holds
    calibration = jnp.array([0.0, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    edges = quantile_edges(calibration, 3)
    new = tiers_from_edges(jnp.array([0.0, 0.75, 1.0]), edges)
    np.testing.assert_array_equal(new, [0, 1, 2])
    cal_tiers = tiers_from_edges(calibration, edges)
    assert 2 not in np.asarray(cal_tiers)
    moved = jax.jit(nearest_calibrated_tier, static_argnums=2)(new, cal_tiers, 3)
    np.testing.assert_array_equal(moved, [0, 1, 1])
    # the nearest calibrated tier, the harder one at equal distance; calibrated tiers stay
    np.testing.assert_array_equal(nearest_calibrated_tier(jnp.arange(5), jnp.array([0, 4]), 5), [0, 0, 4, 4, 4])
    np.testing.assert_array_equal(nearest_calibrated_tier(jnp.arange(4), jnp.arange(4), 4), np.arange(4))
    with pytest.raises(ValueError, match="calibration_tiers is empty"):
        nearest_calibrated_tier(new, jnp.zeros((0,), jnp.int32), 3)
