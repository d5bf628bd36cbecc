"""Tree search over the denoising steps of an SDE (its.refine.sde on the exact velocity of a 2-D
Gaussian mixture, linear path) with a tilt reward r(x) = -0.5 |x - c|^2: NFE equals the planned bound
for beam search, DVTS and REBASE; the expected final reward of beam search grows with the width beyond
the standard error; with a constant reward REBASE gives every node one child, so its candidates are
exactly best-of-N's draws and their law is the base sampler's (mean and covariance within the standard
error of an independent base run); −inf and NaN verdicts never make a NaN and are reported; budget and
argument errors name the argument."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.search.selection import beam_search, dvts, rebase
from itscale.search.tree import tree_search

from .gmm_samplers import euler_maruyama, quadratic_reward

jax.config.update("jax_enable_x64", True)

K = 8                                                # denoising steps (one NFE each per row)
GMM = its.models.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [2.0, 0.0]]),
                                 jnp.array([0.3, 0.3])[:, None, None] * jnp.eye(2))
PATH = its.paths.linear()
SDE = its.refine.sde(GMM.velocity(PATH), PATH)
REWARD = quadratic_reward(jnp.array([2.0, 1.5]), jnp.eye(2))


def _noise(key, n):
    return SDE.prior(key, jnp.zeros((n, 2)))


def _run(sampler, key, queries):
    return its.run(sampler, key, queries, num_steps=K)


@pytest.mark.parametrize("name, build, kept", [
    ("beam", lambda budget: beam_search(SDE, REWARD, nfe_budget=budget, expansions=2), (4,)),
    ("dvts", lambda budget: dvts(SDE, REWARD, nfe_budget=budget, subtree_width=4), (1, 1)),
    ("rebase", lambda budget: rebase(SDE, REWARD, nfe_budget=budget), None),
])
def test_nfe_equals_the_declared_bound(name, build, kept):
    budget, queries = 8 * K + 5, 3                     # 8 rows of 8 steps, 5 NFE left over
    result = _run(build(budget), jax.random.key(0), _noise(jax.random.key(1), queries))
    out = result.output
    split = jax.tree.map(int, out.split)
    assert (split.nfe_budget, split.nfe_bound, split.width, split.num_steps, split.nfe_per_step) == \
        (budget, 8 * K, 8, K, 1)
    assert int(result.stats.nfe) == queries * split.nfe_bound
    assert int(result.stats.verifier_calls) == queries * 8 * K and int(result.stats.nonfinite) == 0
    assert out.candidates.shape == (queries, 8, 2) and out.best.shape == (queries, 2)
    live = np.asarray(out.scores) > -np.inf
    if kept is not None:                                 # beam: the top 4 kept; DVTS: one per subtree
        np.testing.assert_array_equal(live.reshape(queries, len(kept), -1).sum(-1), [kept] * queries)
    np.testing.assert_allclose(out.scores[live], REWARD(out.candidates[live]), rtol=1e-12)
    np.testing.assert_array_equal(out.best_score, np.max(np.asarray(out.scores), axis=1))


@functools.cache
def _beam_rewards(width):
    queries = 200
    sampler = beam_search(SDE, REWARD, nfe_budget=width * K, expansions=2)
    out = jax.jit(lambda key, x: _run(sampler, key, x).output)(jax.random.key(width),
                                                               _noise(jax.random.key(7), queries))
    assert int(out.split.width) == width
    return np.asarray(out.best_score)


def test_expected_final_reward_grows_with_the_width():
    means = {}
    for small, large in ((4, 16), (16, 64)):
        a, b = _beam_rewards(small), _beam_rewards(large)
        se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        assert b.mean() - a.mean() > 4 * se, (small, large, a.mean(), b.mean(), se)
        means[small], means[large] = a.mean(), b.mean()
    # the best of width candidates beats a plain draw: E_p[r] from an independent base run
    base = REWARD(_run(SDE, jax.random.key(3), _noise(jax.random.key(4), 4000)).output)
    assert means[4] > float(base.mean()) + 4 * float(base.std()) / np.sqrt(4000)


def test_constant_reward_rebase_is_the_base_sampler():
    queries, width = 64, 16
    constant = lambda x: jnp.zeros(x.shape[0])  # noqa: E731
    key, noise = jax.random.key(5), _noise(jax.random.key(6), queries)
    out = _run(rebase(SDE, constant, nfe_budget=width * K, reward_temperature=0.3), key, noise).output
    # every node gets one child: no copy is ever made, the rows are best-of-N's independent draws
    bon = _run(its.search.best_of_n(SDE, constant, num_candidates=width), key, noise).output
    np.testing.assert_array_equal(out.candidates, bon.candidates)
    assert np.all(np.asarray(out.scores) == 0)
    # ... whose law is the base sampler's: mean and covariance within 4 standard errors of a base run
    ours = np.asarray(out.candidates).reshape(-1, 2)
    base = np.asarray(_run(SDE, jax.random.key(8), _noise(jax.random.key(9), ours.shape[0])).output)

    def moments(x):
        centred = x - x.mean(0)
        products = (centred[:, :, None] * centred[:, None, :]).reshape(len(x), -1)
        return np.concatenate([x.mean(0), products.mean(0)]), np.concatenate([x.var(0), products.var(0)])

    (m_ours, v_ours), (m_base, v_base) = moments(ours), moments(base)
    se = np.sqrt((v_ours + v_base) / len(ours))
    assert np.all(np.abs(m_ours - m_base) < 4 * se), (m_ours, m_base, se)
    # and both are near the mixture's own mean (a sanity bound on the discretisation)
    np.testing.assert_allclose(ours.mean(0), np.asarray(GMM.mean()), atol=0.3)


def test_impossible_and_invalid_verdicts_are_flagged_without_nan():
    queries, width = 2, 8
    noise = _noise(jax.random.key(10), queries)

    def partly_invalid(x):          # NaN right of x = 1, −inf below y = −1
        return jnp.where(x[:, 0] > 1, jnp.nan, jnp.where(x[:, 1] < -1, -jnp.inf, REWARD(x)))

    impossible = lambda x: jnp.full(x.shape[0], -jnp.inf)  # noqa: E731
    invalid = lambda x: jnp.full(x.shape[0], jnp.nan)  # noqa: E731
    for build, reward in ((beam_search, impossible), (rebase, invalid), (dvts, partly_invalid)):
        result = _run(build(SDE, reward, nfe_budget=width * K), jax.random.key(11), noise)
        out = result.output
        assert int(result.stats.nonfinite) == 0
        assert not np.isnan(np.asarray(out.scores)).any() and not np.isnan(np.asarray(out.best_score)).any()
        assert np.all(np.isfinite(np.asarray(out.candidates)))
        valid = np.asarray(out.valid)
        np.testing.assert_array_equal(valid, np.isfinite(np.asarray(out.best_score)))
        if reward is partly_invalid:     # invalid verdicts met and counted, survivors kept
            assert int(out.invalid_rewards) > 0 and valid.all()
        else:                            # nothing survives the first step; −inf is no fault
            assert not valid.any() and np.all(np.asarray(out.best_score) == -np.inf)
            assert int(out.invalid_rewards) == (queries * width if reward is invalid else 0)


def test_budget_and_argument_errors():
    noise = _noise(jax.random.key(0), 1)
    with pytest.raises(ValueError, match="nfe_budget"):
        beam_search(SDE, REWARD, nfe_budget=0)
    with pytest.raises(ValueError, match=rf"nfe_budget={4 * K - 1} is too small.*nfe_budget >= {4 * K}"):
        _run(beam_search(SDE, REWARD, nfe_budget=4 * K - 1, expansions=4), jax.random.key(0), noise)
    with pytest.raises(ValueError, match="nfe_per_step"):
        rebase(euler_maruyama(GMM), REWARD, nfe_budget=100)
    out = _run(rebase(euler_maruyama(GMM), REWARD, nfe_budget=2 * K, nfe_per_step=1), jax.random.key(0),
               noise).output
    assert int(out.split.width) == 2
    fixed = tree_search(SDE, REWARD, lambda s, live, done, p: live.astype(jnp.int32), nfe_budget=100,
                        num_steps=4)
    with pytest.raises(ValueError, match="num_steps=4"):
        _run(fixed, jax.random.key(0), noise)
    with pytest.raises(TypeError, match="reward_fn"):
        dvts(SDE, None, nfe_budget=100)
    with pytest.raises(ValueError, match="subtree_width"):
        dvts(SDE, REWARD, nfe_budget=100, subtree_width=0)
    with pytest.raises(ValueError, match="reward_temperature"):
        rebase(SDE, REWARD, nfe_budget=100, reward_temperature=-1.0)
