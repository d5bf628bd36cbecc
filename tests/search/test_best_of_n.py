"""best_of_n and plan_width, checked by hand against the base sampler's own candidates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its


def _gaussian_draw() -> its.Sampler:
    """One step replacing x by x + N(0, 1) noise per row; NFE = rows per step."""
    model = its.counted(lambda x, key: x + jax.random.normal(key, x.shape, x.dtype))
    return its.Sampler(lambda key, x, params: x, lambda key, x, ctx, params: (model(x, key), {}), lambda x: x)


def _reward(x):
    return -jnp.sum(x**2, axis=-1)


def test_best_is_the_argmax_of_the_base_samplers_candidates():
    queries = jnp.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 5.0]])
    n, key = 8, jax.random.key(0)
    result = its.run(its.search.best_of_n(_gaussian_draw(), _reward, num_candidates=n), key, queries,
                     num_steps=2)
    out = result.output
    # The same base sampler on the repeated queries draws the same candidates.
    repeated = jnp.repeat(queries, n, axis=0)
    candidates = its.run(_gaussian_draw(), key, repeated, num_steps=2).output.reshape(3, n, 2)
    np.testing.assert_array_equal(out.candidates, candidates)
    scores = np.asarray(_reward(candidates.reshape(-1, 2))).reshape(3, n)
    np.testing.assert_allclose(out.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(out.best_index, scores.argmax(axis=1))
    np.testing.assert_array_equal(out.best, candidates[np.arange(3), scores.argmax(axis=1)])
    np.testing.assert_allclose(out.best_score, scores.max(axis=1), rtol=1e-6)
    assert np.all(out.valid) and int(out.split.width) == n and int(out.invalid_rewards) == 0
    assert int(result.stats.nfe) == 3 * n * 2 and int(result.stats.verifier_calls) == 3 * n


def test_ties_invalid_scores_and_pytree_outputs():
    def reward(out):
        x = out["x"]
        impossible = jnp.where(x[:, 1] > 100.0, -jnp.inf, jnp.zeros(x.shape[0]))
        return jnp.where(x[:, 0] > 100.0, jnp.nan, impossible)

    base = _gaussian_draw()
    sampler = its.Sampler(base.init, base.step, lambda x: {"x": x, "norm": jnp.linalg.norm(x, axis=-1)})
    queries = jnp.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0]])
    out = its.run(its.search.best_of_n(sampler, reward, num_candidates=4), jax.random.key(1), queries,
                  num_steps=1).output
    np.testing.assert_array_equal(out.best_index, [0, 0, 0])          # ties -> lowest index
    np.testing.assert_array_equal(out.valid, [True, False, False])    # NaN and -inf verdicts
    assert int(out.invalid_rewards) == 4                              # the four NaN verdicts
    assert float(out.best_score[0]) == 0.0 and np.all(np.asarray(out.best_score[1:]) == -np.inf)
    assert out.best["x"].shape == (3, 2) and out.best["norm"].shape == (3,)
    assert out.candidates["x"].shape == (3, 4, 2)


def test_plan_width_and_errors():
    split = its.search.plan_width(1000, num_steps=10, nfe_per_step=3)
    assert (split.width, split.nfe_bound, split.num_steps, split.nfe_per_step) == (33, 990, 10, 3)
    assert its.search.plan_width(100, num_steps=4, nfe_per_step=1, group_width=8, rounds=2).width == 8 * 1
    with pytest.raises(ValueError, match="nfe_budget=20 is too small.*give nfe_budget >= 30"):
        its.search.plan_width(20, num_steps=10, nfe_per_step=3)
    with pytest.raises(ValueError, match="exactly one of num_candidates"):
        its.search.best_of_n(_gaussian_draw(), _reward, num_candidates=2, nfe_budget=10)
    with pytest.raises(ValueError, match="nfe_per_step"):       # a hand-written sampler declares no cost
        its.search.best_of_n(_gaussian_draw(), _reward, nfe_budget=10)
    with pytest.raises(ValueError, match="num_candidates"):
        its.search.best_of_n(_gaussian_draw(), _reward, num_candidates=0)
    with pytest.raises(ValueError, match="reward_fn must return scores of shape"):
        its.run(its.search.best_of_n(_gaussian_draw(), lambda x: x, num_candidates=2), jax.random.key(0),
                jnp.zeros((3, 2)), num_steps=1)


def test_an_nfe_budget_buys_the_largest_width_and_spends_at_most_it():
    ode = its.refine.ode(lambda x, t: -x, solver="heun")        # declares 2 NFE per step
    result = its.run(its.search.best_of_n(ode, _reward, nfe_budget=250), jax.random.key(0), jnp.ones((3, 2)),
                     num_steps=6)
    split = result.output.split
    assert (int(split.width), int(split.nfe_bound)) == (20, 240)
    assert int(result.stats.nfe) == 3 * 240 and result.output.candidates.shape == (3, 20, 2)
    with pytest.raises(ValueError, match="nfe_budget=10 is too small"):
        its.run(its.search.best_of_n(ode, _reward, nfe_budget=10), jax.random.key(0), jnp.ones((3, 2)),
                num_steps=6)


def test_best_of_n_over_an_ode_draws_independent_noise_per_candidate():
    """A deterministic sampler repeated on one noise gives one sample n times; each candidate must start
    from its own draw of the path's prior, candidate 0 from the query's own noise."""
    gmm = its.models.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
                                     jnp.stack([0.3 * jnp.eye(2), 0.5 * jnp.eye(2)]))
    ode = its.refine.ode(gmm.velocity(its.paths.linear()), solver="heun")
    queries, n = jax.random.normal(jax.random.key(1), (256, 2)), 8
    result = its.run(its.search.best_of_n(ode, _reward, num_candidates=n), jax.random.key(2), queries,
                     num_steps=16)
    candidates = np.asarray(result.output.candidates)                         # (256, 8, 2)
    assert len(np.unique(candidates.reshape(-1, 2), axis=0)) == 256 * n
    np.testing.assert_allclose(candidates[:, 0], its.run(ode, jax.random.key(2), queries, num_steps=16).output,
                               rtol=1e-5, atol=1e-5)
    assert int(result.stats.nfe) == 256 * n * 16 * 2
    # The fresh candidates are draws of the model's law: their mean is the mixture's.
    fresh = candidates[:, 1:].reshape(-1, 2)
    np.testing.assert_allclose(fresh.mean(axis=0), gmm.mean(), atol=4 * fresh.std(axis=0).max() / np.sqrt(len(fresh)))
    with pytest.raises(AssertionError):     # and the query's own noise is not what they start from
        np.testing.assert_allclose(candidates[:, 1], candidates[:, 0], atol=1e-3)


def test_the_prior_follows_the_path_noise_scale_and_combinators():
    ve = its.paths.ve()
    sampler = its.refine.ode(lambda x, t: jnp.zeros_like(x), path=ve)
    noise = sampler.prior(jax.random.key(0), jnp.zeros((20000, 2)))
    np.testing.assert_allclose(noise.std(), float(ve.sigma(1.0)), rtol=0.02)
    linear = its.refine.ode(lambda x, t: jnp.zeros_like(x))
    assert its.particles(linear, 3).prior(jax.random.key(0), jnp.zeros((3, 5, 2))).shape == (3, 5, 2)
    assert its.chain((linear, 2), (linear, 3)).prior is linear.prior
    assert its.tokens.rollout(its.models.MarkovLM(jnp.zeros(3), jnp.zeros((3, 3))).logits_fn).prior is None
