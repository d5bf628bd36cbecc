"""Rollover budget forcing over an SDE on an exact 2-D Gaussian mixture: the budget and its split,
the rollover arithmetic, reduction to the base sampler bit for bit under a constant reward, reward
growing with the budget, invalid rewards, errors, vmap / jit and no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.search.rbf import rbf
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                 jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
PATH = its.paths.linear()
BASE = its.refine.sde(GMM.velocity(PATH), PATH)          # 1 NFE per step, reports x0_hat
REWARD = gmm_samplers.quadratic_reward(jnp.array([-0.5, 0.5]), jnp.eye(2))
STEPS, QUERIES = 4, 128
NOISE = jax.random.normal(jax.random.key(0), (QUERIES, 2))
KEY = jax.random.key(1)


def _constant(x):
    return jnp.zeros(x.shape[:1])


def _run(sampler, x=NOISE, **kwargs):
    return its.run(sampler, KEY, x, num_steps=STEPS, **kwargs)


def _candidates_under_a_constant_reward(budget: int) -> tuple[int, int]:
    """Candidates drawn and NFE spent when nothing is ever accepted: each step spends its quota
    (everything left minus Q per later step) in candidates of 2 NFE, 1 at the last step."""
    quota, remaining, drawn = (budget - 1) // STEPS, budget - 1, 0
    for i in range(STEPS):
        cost = 1 if i == STEPS - 1 else 2
        n = (remaining - quota * (STEPS - 1 - i)) // cost
        drawn, remaining = drawn + n, remaining - n * cost
    return drawn, budget - remaining


def test_budget_split_and_exact_nfe():
    budget = 37
    result = _run(rbf(BASE, REWARD, nfe_budget=budget))
    out = result.output
    assert int(result.stats.nfe) <= QUERIES * budget
    # Exact: one preview of the initial noise per query plus what the candidates cost.
    assert int(result.stats.nfe) == QUERIES + int(out.info["nfe_spent"].sum())
    split = out.split
    assert (int(split.nfe_budget), int(split.width), int(split.num_steps)) == (budget, 1, STEPS)
    assert int(out.info["step_quota"]) == (budget - 1) // STEPS
    assert np.all(np.asarray(out.info["candidates"]) >= STEPS) and out.candidates.shape == (QUERIES, 1, 2)
    assert np.any(np.asarray(out.info["accepted_steps"]) > 0)                 # rollover happens
    assert np.all(np.asarray(out.info["best_seen_score"]) >= np.asarray(out.best_score))


def test_a_constant_reward_is_the_base_sampler_draw_for_draw_and_spends_the_whole_budget():
    budget, x = 23, NOISE[:1]
    search = rbf(BASE, _constant, nfe_budget=budget)

    def both(key):
        return (its.run(search, key, x, num_steps=STEPS).output.best,
                its.run(BASE, key, x, num_steps=STEPS).output)

    searched, base = jax.jit(jax.vmap(both))(jax.random.split(KEY, 64))
    np.testing.assert_allclose(searched, base, rtol=1e-12)      # two programs: equal to float64 rounding
    result = _run(search, NOISE[:8])
    drawn, spent = _candidates_under_a_constant_reward(budget)
    np.testing.assert_array_equal(result.output.info["candidates"], np.full(8, drawn))
    np.testing.assert_array_equal(result.output.info["accepted_steps"], np.zeros(8))
    assert int(result.stats.nfe) == 8 * spent and int(result.stats.verifier_calls) == 8 * (1 + drawn)


def test_expected_reward_grows_with_the_budget():
    minimum = 1 + 2 * STEPS
    small, large = (np.asarray(_run(rbf(BASE, REWARD, nfe_budget=b)).output.best_score)
                    for b in (minimum, 6 * minimum))
    base = np.asarray(REWARD(_run(BASE).output))
    for low, high in ((base, large), (small, large)):
        se = np.hypot(low.std(ddof=1), high.std(ddof=1)) / np.sqrt(QUERIES)
        assert high.mean() - low.mean() > 4 * se, (low.mean(), high.mean(), se)


def test_impossible_rewards_give_no_nan_and_are_flagged():
    result = _run(rbf(BASE, lambda x: jnp.full(x.shape[:1], -jnp.inf), nfe_budget=15), NOISE[:8])
    drawn, _ = _candidates_under_a_constant_reward(15)      # nothing beats -inf: every quota is spent
    out = result.output
    assert np.all(np.isfinite(out.best)) and not np.any(out.valid)
    assert np.all(np.asarray(out.best_score) == -np.inf) and int(result.stats.nonfinite) == 0
    np.testing.assert_array_equal(out.info["candidates"], np.full(8, drawn))
    assert int(out.invalid_rewards) == 0      # NaN verdicts are read as -inf and counted (test_svdd)


def test_budget_below_the_minimum_raises_and_new_params_do_not_retrace():
    with pytest.raises(ValueError, match=f"nfe_budget={2 * STEPS} is too small.*nfe_budget >= {2 * STEPS + 1}"):
        _run(rbf(BASE, REWARD, nfe_budget=2 * STEPS))
    with pytest.raises(ValueError, match="nfe_per_step"):
        rbf(gmm_samplers.euler_maruyama(GMM), REWARD, nfe_budget=100)
    traces = []

    def reward(x):
        traces.append(1)
        return REWARD(x)

    search = rbf(BASE, reward, nfe_budget=20)
    first = _run(search, NOISE[:8]).output
    count = len(traces)
    second = _run(search, NOISE[:8], params=search.params._replace(base={"g_scale": 1.0})).output
    assert len(traces) == count and not np.array_equal(first.best, second.best)
