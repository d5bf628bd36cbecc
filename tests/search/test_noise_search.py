"""Random search and zero-order search over initial noise, on a 2-d Gaussian mixture with its exact velocity.

Exact checks: one round is best-of-N bit for bit; NFE and verifier calls equal the declared split;
the chosen noise, run again through the (deterministic) base ODE, gives the chosen output and score;
neighbours keep the pivot's norm at angle atan(λ). Statistical checks (over many queries, margins of
several standard errors): the expected best reward grows with the budget.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.search.best_of_n import best_of_n
from itscale.search.noise_search import ZeroOrderParams, neighbours, random_search, zero_order_search
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

PATH = its.paths.linear()
GMM = its.models.GaussianMixture(jnp.array([0.7, 0.3]), jnp.array([[-1.5, 0.0], [2.0, 1.0]]),
                                 jnp.stack([0.3 * jnp.eye(2), 0.2 * jnp.eye(2)]))
REWARD = gmm_samplers.quadratic_reward(jnp.array([2.5, 1.5]), 2.0 * jnp.eye(2))   # favours the rare mode
ODE = its.refine.ode(GMM.velocity(PATH), solver="euler", path=PATH)


def _queries(n, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, 2))


def test_one_round_is_best_of_n_bit_for_bit_and_random_search_is_best_of_n():
    x, key = _queries(3), jax.random.key(0)
    reference = its.run(best_of_n(ODE, REWARD, nfe_budget=60), key, x, num_steps=6)
    searches = (zero_order_search(ODE, REWARD, nfe_budget=60, rounds=1), random_search(ODE, REWARD, nfe_budget=60))
    results = [its.run(search, key, x, num_steps=6) for search in searches]
    for result in results:
        for field in ("candidates", "scores", "best", "best_index", "best_score", "valid"):
            np.testing.assert_array_equal(getattr(result.output, field), getattr(reference.output, field))
        assert int(result.output.split.width) == 10 and int(result.stats.nfe) == int(reference.stats.nfe) == 3 * 60
    # The chosen noise is the candidate's own: re-running it through the ODE gives the best output.
    out = results[0].output
    again = its.run(ODE, key, out.info["best_noise"], num_steps=6).output
    np.testing.assert_allclose(again, out.best, rtol=1e-12, atol=1e-12)


def test_rounds_climb_from_the_pivot_with_exact_counts():
    x, key, rounds, steps = _queries(5), jax.random.key(3), 3, 4
    search = zero_order_search(ODE, REWARD, nfe_budget=100, rounds=rounds, lam=0.5)
    result = its.run(search, key, x, num_steps=steps)
    out, n = result.output, 8                                     # 100 // (3 rounds x 4 steps) = 8
    split = (int(out.split.width), int(out.split.rounds), int(out.split.nfe_bound))
    assert split == (n, rounds, n * steps * rounds)
    assert int(result.stats.nfe) == 5 * n * steps * rounds and int(result.stats.verifier_calls) == 5 * n * rounds
    assert out.candidates.shape == (5, n + 1, 2) and out.info["round_best_scores"].shape == (5, rounds)
    # Hill climbing: the result is the best reward met in any round, and round 1 alone is best-of-8.
    np.testing.assert_allclose(out.best_score, np.max(out.info["round_best_scores"], axis=1), rtol=0, atol=0)
    first = its.run(zero_order_search(ODE, REWARD, nfe_budget=n * steps, rounds=1), key, x, num_steps=steps).output
    np.testing.assert_array_equal(out.info["round_best_scores"][:, 0], first.best_score)
    assert np.all(np.asarray(out.best_score) >= np.asarray(first.best_score))
    # The noise reported for the best, run again through the deterministic base ODE, gives it exactly,
    # and lies on the sphere of its round-1 pivot (neighbours keep the norm).
    best_noise = out.info["best_noise"]
    again = its.run(ODE, key, best_noise, num_steps=steps).output
    np.testing.assert_allclose(again, out.best, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(REWARD(again), out.best_score, rtol=1e-10)
    pivot_norm = np.linalg.norm(first.info["best_noise"], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(best_noise, axis=-1), pivot_norm, rtol=1e-10)
    assert int(result.stats.nonfinite) == 0 and int(out.invalid_rewards) == 0


def test_neighbours_keep_the_norm_at_angle_atan_lambda():
    pivot = 3.0 * jax.random.normal(jax.random.key(0), (4, 5, 3))
    lam, n = 0.75, 2000
    draw = jax.jit(neighbours, static_argnums=3)
    near = np.asarray(draw(jax.random.key(1), pivot, lam, n)).reshape(4, n, 15)
    flat = np.asarray(pivot).reshape(4, 1, 15)
    norm = np.linalg.norm(flat, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(near, axis=-1), np.broadcast_to(norm, (4, n)), rtol=1e-12)
    cos = np.sum(near * flat, axis=-1) / norm**2
    np.testing.assert_allclose(cos, 1.0 / np.sqrt(1.0 + lam**2), rtol=1e-12)
    # The tangent direction is uniform: its mean vanishes (within 5 standard errors).
    tangent = near / norm[..., None] - cos[..., None] * flat / norm[..., None]
    assert np.all(np.abs(tangent.mean(axis=1)) < 5 * tangent.std(axis=1) / np.sqrt(n))
    assert np.all(np.asarray(draw(jax.random.key(2), jnp.zeros((2, 3)), lam, 4)) == 0.0)


def test_expected_best_reward_grows_with_the_budget():
    """Over 400 queries, the mean best reward at 4x the budget beats the smaller budget by more than
    4 standard errors of the difference, for random search and zero-order search."""
    x, key, steps = _queries(400, seed=7), jax.random.key(11), 4
    for build in (lambda b: random_search(ODE, REWARD, nfe_budget=b),
                  lambda b: zero_order_search(ODE, REWARD, nfe_budget=b, rounds=2)):
        small, large = (np.asarray(its.run(build(b), key, x, num_steps=steps).output.best_score) for b in (16, 64))
        diff = large - small
        assert diff.mean() > 4 * diff.std() / np.sqrt(len(diff)), (diff.mean(), diff.std())


@pytest.mark.parametrize("verdict", [-np.inf, np.nan])
def test_all_rewards_impossible_or_invalid(verdict):
    reward = lambda x: jnp.full(x.shape[:1], verdict)            # noqa: E731
    result = its.run(zero_order_search(ODE, reward, nfe_budget=24, rounds=2), jax.random.key(0), _queries(3),
                     num_steps=3)
    out = result.output
    assert not np.any(np.asarray(out.valid)) and np.all(np.asarray(out.best_score) == -np.inf)
    assert np.all(np.isfinite(out.best)) and np.all(np.isfinite(out.info["best_noise"]))
    assert int(result.stats.nonfinite) == 0
    assert int(out.invalid_rewards) == (3 * 4 * 2 if np.isnan(verdict) else 0)


def test_budget_and_argument_errors():
    with pytest.raises(ValueError, match=r"nfe_budget=11 is too small.*give nfe_budget >= 12"):
        its.run(zero_order_search(ODE, REWARD, nfe_budget=11, rounds=3), jax.random.key(0), _queries(2),
                num_steps=4)
    with pytest.raises(ValueError, match=r"num_neighbors=4.*give nfe_budget >= 48 or num_neighbors <= 2"):
        its.run(zero_order_search(ODE, REWARD, nfe_budget=30, rounds=3, num_neighbors=4), jax.random.key(0),
                _queries(2), num_steps=4)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        zero_order_search(ODE, REWARD, nfe_budget=30, rounds=0)
    with pytest.raises(ValueError, match="lam must lie in"):
        zero_order_search(ODE, REWARD, nfe_budget=30, rounds=2, lam=-1.0)
    with pytest.raises(ValueError, match=r"params\['lam'\] must lie in"):
        search = zero_order_search(ODE, REWARD, nfe_budget=30, rounds=2)
        its.run(search, jax.random.key(0), _queries(2), num_steps=3, params=ZeroOrderParams(None, -0.5))
    with pytest.raises(ValueError, match="prior"):
        zero_order_search(gmm_samplers.exact_ancestral(GMM), REWARD, nfe_budget=30, rounds=2, nfe_per_step=1)
    with pytest.raises(ValueError, match="nfe_per_step"):
        zero_order_search(gmm_samplers.exact_ancestral(GMM)._replace(prior=ODE.prior), REWARD, nfe_budget=30,
                          rounds=2)


def test_sde_and_ddim_with_eta_on_batches_without_retracing():
    """Stochastic bases: exact NFE, finite outputs, hill climbing never loses the round-1 best, and new
    hyper-parameters (λ, the base's g_scale / η) reuse the compilation."""
    traces = []

    def reward(x):
        traces.append(1)
        return REWARD(x)

    x, key, steps = _queries(64, seed=5), jax.random.key(2), 5
    sde = its.refine.sde(GMM.velocity(PATH), PATH)
    ddim = its.refine.ddpm(GMM.velocity(PATH), PATH)
    for base, new_base_params in ((sde, {"g_scale": 1.0}), (ddim, {**ddim.params, "eta": 0.5})):
        search = zero_order_search(base, reward, nfe_budget=60, rounds=3)
        result = its.run(search, key, x, num_steps=steps)
        out, n = result.output, 4
        assert int(result.stats.nfe) == 64 * n * steps * 3 and int(result.stats.verifier_calls) == 64 * n * 3
        assert np.all(np.isfinite(out.candidates)) and np.all(np.asarray(out.valid))
        np.testing.assert_array_equal(out.best_score, np.max(out.info["round_best_scores"], axis=1))
        assert np.mean(out.best_score) > np.mean(out.info["round_best_scores"][:, 0])
        count = len(traces)
        other = its.run(search, key, x, num_steps=steps, params=ZeroOrderParams(new_base_params, 0.1))
        assert len(traces) == count                                      # no retrace
        assert not np.array_equal(other.output.best, out.best)           # the new values were used
