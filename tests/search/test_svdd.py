"""SVDD and CoDe over an SDE on an exact 2-D Gaussian mixture: reduction to the base sampler bit for bit,
CoDe(block 1) = SVDD, exact NFE, reward growing with the number of children, invalid rewards, errors,
vmap and no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.search.code import code
from itscale.search.svdd import svdd
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                 jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
PATH = its.paths.linear()
BASE = its.refine.sde(GMM.velocity(PATH), PATH)          # declares 1 NFE per step, reports x0_hat
REWARD = gmm_samplers.quadratic_reward(jnp.array([-0.5, 0.5]), jnp.eye(2))
STEPS, QUERIES = 6, 256
NOISE = jax.random.normal(jax.random.key(0), (QUERIES, 2))
KEY = jax.random.key(1)


def _run(sampler, x=NOISE, **kwargs):
    return its.run(sampler, KEY, x, num_steps=STEPS, **kwargs)


def test_one_child_is_the_base_sampler_bit_for_bit():
    base = _run(BASE)
    for search in (svdd(BASE, REWARD, num_children=1), code(BASE, REWARD, num_children=1, block_size=4)):
        result = _run(search)
        np.testing.assert_array_equal(result.output.best, base.output)
        np.testing.assert_array_equal(result.output.best_score, REWARD(base.output))
        assert int(result.stats.nfe) == int(base.stats.nfe) == QUERIES * STEPS      # no preview at K = 1


def test_code_with_block_one_is_greedy_svdd_and_nfe_is_exact():
    k, queries = 4, NOISE[:16]
    first, second = _run(svdd(BASE, REWARD, num_children=k), queries), _run(
        code(BASE, REWARD, num_children=k, block_size=1), queries)
    np.testing.assert_array_equal(first.output.best, second.output.best)
    np.testing.assert_array_equal(first.output.scores, second.output.scores)
    # K children drawn at every step, previewed at every step but the last.
    assert int(first.stats.nfe) == 16 * k * (2 * STEPS - 1) == 16 * int(first.output.split.nfe_bound)
    assert int(first.stats.verifier_calls) == 16 * k * STEPS
    blocks = _run(code(BASE, REWARD, num_children=k, block_size=4), queries)    # selections at steps 3, 5
    assert int(blocks.stats.nfe) == 16 * k * (STEPS + 1) == 16 * int(blocks.output.split.nfe_bound)
    assert int(blocks.stats.verifier_calls) == 16 * k * 2


def test_expected_reward_grows_with_the_number_of_children():
    rewards = {k: np.asarray(_run(svdd(BASE, REWARD, num_children=k)).output.best_score) for k in (1, 3, 9)}
    se = {k: r.std(ddof=1) / np.sqrt(QUERIES) for k, r in rewards.items()}
    for small, large in ((1, 3), (3, 9)):
        gap = rewards[large].mean() - rewards[small].mean()
        assert gap > 4 * np.hypot(se[small], se[large]), (small, large, gap, se)
    # A block of 3 steps selects twice: better than the base sampler, not as good as SVDD with 9.
    blockwise = np.asarray(_run(code(BASE, REWARD, num_children=9, block_size=3)).output.best_score)
    assert rewards[1].mean() + 4 * se[1] < blockwise.mean() < rewards[9].mean()


def test_soft_selection_and_new_alpha_do_not_retrace():
    traces = []

    def reward(x):
        traces.append(1)
        return REWARD(x)

    search = svdd(BASE, reward, num_children=9)
    greedy = _run(search).output
    count = len(traces)
    params = search.params._replace(alpha=1e9)                # α → ∞: a uniform pick, the base law
    uniform = _run(search, params=params).output
    assert len(traces) == count
    base = np.asarray(REWARD(_run(BASE).output))
    se = np.hypot(base.std(ddof=1), np.asarray(uniform.best_score).std(ddof=1)) / np.sqrt(QUERIES)
    assert abs(float(uniform.best_score.mean()) - base.mean()) < 4 * se
    assert float(greedy.best_score.mean()) > base.mean() + 4 * se
    with pytest.raises(ValueError, match="alpha"):
        _run(search, params=params._replace(alpha=-1.0))


def test_invalid_and_impossible_rewards_give_no_nan_and_are_flagged():
    queries, k = NOISE[:8], 2
    nan = _run(svdd(BASE, lambda x: jnp.full(x.shape[:1], jnp.nan), num_children=k), queries)
    impossible = _run(code(BASE, lambda x: jnp.full(x.shape[:1], -jnp.inf), num_children=k, block_size=2),
                      queries)
    for result in (nan, impossible):
        out = result.output
        assert np.all(np.isfinite(out.best)) and not np.any(out.valid)
        assert np.all(np.asarray(out.best_score) == -np.inf) and int(result.stats.nonfinite) == 0
    assert int(nan.output.invalid_rewards) == 8 * k * STEPS and int(impossible.output.invalid_rewards) == 0


def test_budget_planning_and_errors():
    per_child = 2 * STEPS - 1
    out = _run(svdd(BASE, REWARD, nfe_budget=2 * 5 * per_child + 3, num_particles=2), NOISE[:4]).output
    split = out.split
    assert (int(split.width), int(split.num_groups), int(split.group_width)) == (10, 2, 5)
    assert int(split.nfe_bound) == 2 * 5 * per_child and out.candidates.shape == (4, 2, 2)
    assert np.array_equal(out.best, out.candidates[np.arange(4), out.best_index])
    one = _run(svdd(BASE, REWARD, nfe_budget=STEPS + 1), NOISE[:4]).output     # only the base sampler fits
    assert int(one.split.group_width) == 1
    with pytest.raises(ValueError, match=f"nfe_budget=5 is too small.*give nfe_budget >= {STEPS}"):
        _run(svdd(BASE, REWARD, nfe_budget=5), NOISE[:4])
    with pytest.raises(ValueError, match="exactly one of num_children"):
        svdd(BASE, REWARD, nfe_budget=100, num_children=2)
    with pytest.raises(ValueError, match="block_size"):
        code(BASE, REWARD, num_children=2, block_size=0)
    with pytest.raises(ValueError, match="x0_hat"):
        _run(svdd(gmm_samplers.one_shot(GMM), REWARD, num_children=2), NOISE[:4])


def test_runs_under_vmap_over_keys():
    search = svdd(BASE, REWARD, num_children=3, num_particles=2)

    def one(key):
        return its.run(search, key, NOISE[:4], num_steps=STEPS).output.best

    keys = jax.random.split(jax.random.key(7), 3)
    batched = jax.jit(jax.vmap(one))(keys)
    np.testing.assert_allclose(batched[1], one(keys[1]), rtol=1e-12, atol=1e-12)
    assert not np.allclose(batched[0], batched[1])
