"""Allocation by difficulty: the planner against brute force on exact best-of-N curves, and the masked
single program against per-query selection."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.core.run import _run
from itscale.scaling.allocator import (AllocatedQueries, allocate, allocated_search, masked_select,
                                       plan_allocation, uniform_allocation, width_buckets)
from itscale.scaling.difficulty import quantile_tiers
from itscale.search.voting import NO_ANSWER

jax.config.update("jax_enable_x64", True)

# Three tiers of per-sample success p; option 0 draws one-step samples (1 NFE per unit width), option 1
# two-step samples (2 NFE) that succeed with 1 - (1 - p)^1.5. Best-of-n with an oracle verifier is
# right iff some sample is: accuracy 1 - (1 - p)^n exactly.
P = np.array([0.9, 0.5, 0.1])
WIDTHS = np.arange(1, 9)
NFE_PER_WIDTH = np.array([1, 2])
SIZES = np.array([3, 4, 5])


def _curves(p=P, widths=WIDTHS):
    deeper = 1 - (1 - p) ** 1.5
    return np.stack([1 - (1 - q[:, None]) ** widths[None, :] for q in (p, deeper)], axis=1)   # (D, O, G)


def _brute_force(accuracy, sizes, budget):
    """Best mean accuracy over every (option, width) per tier whose total NFE fits."""
    d, o, g = accuracy.shape
    nfe = (NFE_PER_WIDTH[:, None] * WIDTHS[None, :]).ravel()
    flat = accuracy.reshape(d, -1)
    best = -np.inf
    for choice in itertools.product(range(o * g), repeat=d):
        if np.sum(sizes * nfe[list(choice)]) <= budget:
            best = max(best, np.sum(sizes * flat[np.arange(d), list(choice)]) / sizes.sum())
    return best


@pytest.mark.parametrize("budget", [12, 20, 31, 48, 70, 100, 150, 300])
def test_plan_is_the_brute_force_optimum_and_never_worse_than_uniform(budget):
    accuracy = _curves()
    plan = plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, budget)
    assert plan.total_nfe <= budget
    assert plan.total_nfe == int(np.sum(SIZES * plan.nfe))
    np.testing.assert_array_equal(plan.nfe, NFE_PER_WIDTH[plan.option] * plan.width)
    grid = np.searchsorted(WIDTHS, plan.width)
    np.testing.assert_allclose(plan.accuracy, accuracy[np.arange(3), plan.option, grid])
    best = _brute_force(accuracy, SIZES, budget)
    assert plan.expected_accuracy == pytest.approx(best, rel=1e-14, abs=1e-15)
    uniform = uniform_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, budget)
    assert uniform.total_nfe <= budget and len(set(zip(uniform.option, uniform.width))) == 1
    assert plan.expected_accuracy >= uniform.expected_accuracy - 1e-15


def test_allocation_beats_uniform_and_favours_the_hard_tiers():
    accuracy = _curves()
    budget = 4 * SIZES.sum()
    plan = plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, budget)
    uniform = uniform_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, budget)
    # Uniform: width 4 of option 0 for everyone (the best single choice at 4 NFE per query).
    assert (int(uniform.option[0]), int(uniform.width[0])) == (0, 4)
    width_four = np.sum(SIZES * (1 - (1 - P) ** 4)) / SIZES.sum()
    assert uniform.expected_accuracy == pytest.approx(width_four, rel=1e-14)
    assert plan.expected_accuracy > uniform.expected_accuracy + 0.01
    assert plan.nfe[0] < plan.nfe[2]                                     # easy tier: less compute


def test_equal_shares_pick_each_tiers_best_option_within_the_share():
    accuracy = _curves()
    for share in (2, 4, 8):
        plan = plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, share * SIZES.sum() + 1,
                               redistribute=False)
        nfe = (NFE_PER_WIDTH[:, None] * WIDTHS[None, :]).ravel()
        for d in range(3):
            fits = np.where(nfe <= share, accuracy[d].ravel(), -np.inf)
            assert plan.accuracy[d] == fits.max() and plan.nfe[d] <= share


def test_unmeasured_points_empty_tiers_and_errors():
    accuracy = _curves()
    accuracy[2, 0, :] = np.nan                                          # option 0 not measured on tier 2
    plan = plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, np.array([3, 0, 5]), 100)
    assert int(plan.option[2]) == 1 and np.isfinite(plan.expected_accuracy)
    with pytest.raises(ValueError, match="nfe_budget"):
        plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, 3 + 4 + 5 * 2 - 1)   # tier 2 needs option 1
    plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, 3 + 4 + 5 * 2)
    with pytest.raises(ValueError, match="widths"):
        plan_allocation(accuracy, WIDTHS[:3], NFE_PER_WIDTH, SIZES, 100)
    with pytest.raises(ValueError, match="nfe_budget"):
        uniform_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, 11)
    accuracy[1] = np.nan                                                # tier 1: nothing measured
    for allocation in (plan_allocation, uniform_allocation):
        with pytest.raises(ValueError, match=r"accuracy has no measured .* tier\(s\) \[1\]"):
            allocation(accuracy, WIDTHS, NFE_PER_WIDTH, SIZES, 100)
        allocation(accuracy, WIDTHS, NFE_PER_WIDTH, np.array([3, 0, 5]), 100)   # an empty tier needs no curve


def _reference(scores, answers, n, rule):
    """One query's choice among its n candidates, by hand (numpy, no masks)."""
    s = np.where(np.isnan(scores[:n]) | (scores[:n] == np.inf), -np.inf, scores[:n])
    a = answers[:n]
    if rule == "best_of_n":
        eligible = np.ones(n, bool)
    else:
        weights = np.ones(n) if rule == "majority_vote" else np.maximum(np.where(s > -np.inf, s, 0), 0)
        tally = {v: weights[a == v].sum() for v in set(a.tolist()) - {NO_ANSWER}}
        if tally:
            top = max(tally.values())
            winner = min(v for v, t in tally.items() if t == top)
            eligible = a == winner
        else:
            eligible = np.ones(n, bool)
    scored = np.where(eligible, s, -np.inf)
    return int(np.argmax(scored)) if np.any(scored > -np.inf) else int(np.argmax(eligible))


def test_masked_selection_equals_each_query_alone():
    rules = ("best_of_n", "majority_vote", "weighted_vote")
    rng = np.random.default_rng(0)
    batch, width = 24, 8
    scores = rng.uniform(0, 1, (batch, width))
    scores[rng.uniform(size=scores.shape) < 0.15] = np.nan
    scores[rng.uniform(size=scores.shape) < 0.15] = -np.inf
    answers = rng.integers(-1, 3, (batch, width))
    widths = rng.integers(1, width + 1, batch)
    options = np.arange(batch) % 3
    select = jax.jit(masked_select, static_argnames="rules")
    chosen = select(scores, widths, options, rules=rules, answers=answers)
    for q in range(batch):
        n = int(widths[q])
        alone = masked_select(scores[q:q + 1, :n], widths[q:q + 1], options[q:q + 1], rules=rules,
                              answers=answers[q:q + 1, :n])
        expected = _reference(scores[q], answers[q], n, rules[options[q]])
        assert int(chosen.index[q]) == int(alone.index[0]) == expected
        assert int(chosen.answer[q]) == int(alone.answer[0]) == int(answers[q, int(chosen.index[q])])


GMM = its.models.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                                 jnp.stack([0.3 * jnp.eye(2)] * 2))


def _reward(x):
    return -jnp.sum((x - jnp.array([2.0, 1.0])) ** 2, axis=-1)


def _answer(x):
    return (x[:, 0] > 0).astype(jnp.int32)                  # which mode the sample landed in


def test_one_program_runs_mixed_widths_exactly_as_best_of_n_per_query():
    base = its.refine.ode(GMM.velocity(its.paths.linear()), solver="euler")
    rules = ("best_of_n", "majority_vote")
    max_width, steps, batch = 6, 4, 5
    sampler = allocated_search(base, _reward, max_width=max_width, rules=rules, answer_fn=_answer)
    key = jax.random.key(3)
    noise = jax.random.normal(jax.random.key(4), (batch, 2))
    full = its.run(its.search.best_of_n(base, _reward, num_candidates=max_width), key, noise, num_steps=steps)
    candidates = np.asarray(full.output.candidates)
    scores = np.asarray(full.output.scores)
    answers = np.asarray(_answer(candidates.reshape(-1, 2))).reshape(batch, max_width)
    compiled = _run._cache_size()
    for widths, options in (([1, 6, 3, 2, 5], [0, 0, 1, 1, 0]), ([6, 6, 1, 4, 2], [1, 0, 0, 1, 1]),
                            ([2, 3, 4, 5, 6], [1, 1, 1, 0, 0])):
        x = AllocatedQueries(noise, jnp.array(widths, jnp.int32), jnp.array(options, jnp.int32))
        result = its.run(sampler, key, x, num_steps=steps)
        out = result.output
        np.testing.assert_array_equal(out.candidates, candidates)        # the same candidates, bit for bit
        for q in range(batch):
            index = _reference(scores[q], answers[q], widths[q], rules[options[q]])
            assert int(out.best_index[q]) == index
            np.testing.assert_array_equal(out.best[q], candidates[q, index])
            assert float(out.best_score[q]) == scores[q, index]
            assert np.all(np.asarray(out.scores[q, widths[q]:]) == -np.inf)
        np.testing.assert_array_equal(out.info["nfe_allocated"], np.array(widths) * steps)
        np.testing.assert_array_equal(out.info["nfe_executed"], np.full(batch, max_width * steps))
        assert int(result.stats.nfe) == batch * max_width * steps    # masked work is reported honestly
    assert _run._cache_size() == compiled + 1                         # one compilation for all batches
    with pytest.raises(ValueError, match="x.width"):
        zeros = jnp.zeros(batch, jnp.int32)
        its.run(sampler, key, AllocatedQueries(noise, zeros, zeros), num_steps=steps)


def test_a_token_rollouts_prefill_counts_in_the_allocated_and_executed_nfe():
    lm = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.3, 0.2])), jnp.log(jnp.full((3, 3), 1 / 3)))
    rollout = its.tokens.rollout(lm.logits_fn, max_new_tokens=3)
    prompts = jnp.array([[0, 1, 2, 1], [2, 2, 0, 1], [1, 0, 0, 2]], jnp.int32)
    prefill = int(its.run(rollout, jax.random.key(0), prompts[:1], num_steps=3).stats.nfe) - 3
    widths = np.array([1, 3, 2])
    sampler = allocated_search(rollout, lambda g: g.tokens[:, -1].astype(jnp.float32), max_width=3,
                               buckets=width_buckets(widths))
    queries = AllocatedQueries(prompts, jnp.asarray(widths), jnp.zeros(3, jnp.int32))
    result = its.run(sampler, jax.random.key(1), queries, num_steps=3)
    assert int(result.output.split.row_init) == prefill > 0
    np.testing.assert_array_equal(result.output.info["nfe_executed"], widths * (prefill + 3))
    assert int(result.stats.nfe) == int(np.sum(result.output.info["nfe_executed"]))


def _check_selections(out, widths, options, rules):
    candidates = np.asarray(out.candidates)
    scores = np.asarray(out.scores)
    answers = np.asarray(_answer(candidates.reshape(-1, 2))).reshape(candidates.shape[:2])
    for q, (w, o) in enumerate(zip(widths, options)):
        assert np.all(scores[q, w:] == -np.inf) and np.all(np.isfinite(scores[q, :w]))
        index = _reference(scores[q], answers[q], w, rules[o])
        assert int(out.best_index[q]) == index and int(out.info["answer"][q]) == answers[q, index]
        np.testing.assert_array_equal(out.best[q], candidates[q, index])


def test_exact_buckets_execute_only_the_allocated_compute():
    base = its.refine.ode(GMM.velocity(its.paths.linear()), solver="euler")
    rules = ("best_of_n", "majority_vote")
    steps, batch, key = 3, 6, jax.random.key(3)
    noise = jax.random.normal(jax.random.key(4), (batch, 2))
    own = its.run(base, key, noise, num_steps=steps).output             # each query's own noise, solved
    widths, options = np.array([1, 4, 2, 4, 1, 4]), np.array([0, 1, 0, 0, 1, 1])
    buckets = width_buckets(widths)
    assert buckets == ((1, 2), (2, 1), (4, 3))
    sampler = allocated_search(base, _reward, max_width=4, rules=rules, answer_fn=_answer, buckets=buckets)
    compiled = _run._cache_size()
    for perm in (np.arange(batch), np.array([5, 3, 0, 1, 4, 2])):     # same bucket counts, new order
        w, o = widths[perm], options[perm]
        result = its.run(sampler, key, AllocatedQueries(noise, jnp.asarray(w), jnp.asarray(o)), num_steps=steps)
        out = result.output
        assert int(result.stats.nfe) == int(w.sum()) * steps                  # no masked work ran
        np.testing.assert_array_equal(out.info["nfe_executed"], w * steps)
        np.testing.assert_array_equal(out.info["nfe_allocated"], w * steps)
        assert not np.any(out.info["dropped"])
        np.testing.assert_allclose(out.candidates[:, 0], own, rtol=1e-12)   # candidate 0: the query's noise
        flat = np.asarray(out.candidates)[np.arange(4)[None, :] < w[:, None]]
        assert len({tuple(np.round(c, 9)) for c in flat}) == flat.shape[0]  # other candidates: fresh noise
        _check_selections(out, w, o, rules)
    assert _run._cache_size() == compiled + 1


def test_full_bucket_overflows_into_a_wider_one_and_no_room_is_an_error():
    base = its.refine.ode(GMM.velocity(its.paths.linear()), solver="euler")
    sampler = allocated_search(base, _reward, max_width=5, answer_fn=_answer, buckets=((2, 1), (5, 2)))
    noise = jax.random.normal(jax.random.key(5), (3, 2))
    widths = jnp.array([2, 1, 3])
    x = AllocatedQueries(noise, widths, jnp.zeros(3, jnp.int32))
    result = its.run(sampler, jax.random.key(6), x, num_steps=2)
    np.testing.assert_array_equal(result.output.info["nfe_executed"], [4, 10, 10])   # query 1 overflowed
    assert int(result.stats.nfe) == (2 + 5 + 5) * 2
    _check_selections(result.output, [2, 1, 3], [0, 0, 0], ("best_of_n",))
    roomy = allocated_search(base, _reward, max_width=5, buckets=((2, 2), (5, 2)))     # slot 1 stays empty
    spare = its.run(roomy, jax.random.key(6), x._replace(width=jnp.array([3, 1, 4])), num_steps=2)
    assert int(spare.stats.nfe) == (2 + 2 + 5 + 5) * 2
    np.testing.assert_allclose(spare.output.candidates[:, 0], its.run(base, jax.random.key(6), noise, num_steps=2).output,
                               rtol=1e-12)                     # query 0 keeps its noise after the empty slot
    crowded = AllocatedQueries(noise, jnp.array([4, 5, 3]), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="buckets .* cannot hold 1 of the queries"):
        its.run(sampler, jax.random.key(6), crowded, num_steps=2)
    traced = jax.jit(lambda w: its.run(sampler, jax.random.key(6), crowded._replace(width=w), num_steps=2).output)
    out = traced(crowded.width)                         # traced widths: the dropped query is flagged, not run
    np.testing.assert_array_equal(out.info["dropped"], [False, False, True])
    assert float(out.best_score[2]) == -np.inf and not bool(out.valid[2])
    assert int(out.info["answer"][2]) == NO_ANSWER


@pytest.mark.parametrize("buckets", [((3, 1), (2, 1)), ((2, 1), (7, 1)), ((2, 0),), ((2.5, 1),), (2, 1), ()])
def test_bad_buckets_are_rejected(buckets):
    base = its.refine.ode(GMM.velocity(its.paths.linear()), solver="euler")
    with pytest.raises(ValueError, match="buckets"):
        allocated_search(base, _reward, max_width=6, buckets=buckets)


def test_allocate_maps_tiers_to_their_plan():
    plan = plan_allocation(_curves(), WIDTHS, NFE_PER_WIDTH, SIZES, 60)
    tiers = jnp.array([2, 0, 1, 1, 2])
    width, option = jax.jit(allocate)(plan, tiers)
    np.testing.assert_array_equal(width, plan.width[np.asarray(tiers)])
    np.testing.assert_array_equal(option, plan.option[np.asarray(tiers)])


def test_uniform_ignores_empty_tiers():
    accuracy = _curves()
    accuracy[1] = np.nan                                                # nothing measured on the empty tier
    uniform = uniform_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, np.array([3, 0, 5]), 8 * 4)
    assert (int(uniform.option[0]), int(uniform.width[0])) == (0, 4)
    expected = (3 * (1 - 0.1**4) + 5 * (1 - 0.9**4)) / 8
    assert uniform.expected_accuracy == pytest.approx(expected, rel=1e-14)


def test_equal_difficulties_reduce_the_plan_to_uniform_allocation():
    tiers = np.asarray(quantile_tiers(jnp.full(12, 0.25), 3))
    assert np.all(tiers == 0)                                  # equal estimates: one tier
    accuracy = _curves()[1:2]                                  # the curves of that tier
    sizes = np.array([12])
    for budget in (12, 30, 48, 96, 200):
        plan = plan_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, sizes, budget)
        uniform = uniform_allocation(accuracy, WIDTHS, NFE_PER_WIDTH, sizes, budget)
        assert (plan.option.tolist(), plan.width.tolist()) == (uniform.option.tolist(), uniform.width.tolist())
        assert plan.expected_accuracy == uniform.expected_accuracy and plan.total_nfe <= budget
