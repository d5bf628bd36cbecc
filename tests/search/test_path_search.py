"""Search over paths on a 2-d Gaussian mixture with its exact velocity / exact ancestral steps.

Exact checks: the split and NFE formula; one branching reproduced by hand from the recorded states
(top-N on the lagged x̂₀, forward re-noising, Δf steps back); the forward re-noising keeps the
path's marginals. Statistical checks (many queries, margins of several standard errors): with zero
reward the output follows the base sampler's law (the mixture); the best reward grows with the budget.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.refine.grid_times import grid_times
from itscale.search.path_search import _RENOISE, path_search, renoise
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

PATH = its.paths.linear()
GMM = its.models.GaussianMixture(jnp.array([0.7, 0.3]), jnp.array([[-1.5, 0.0], [2.0, 1.0]]),
                                 jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.3]]]))
REWARD = gmm_samplers.quadratic_reward(jnp.array([2.5, 1.5]), 2.0 * jnp.eye(2))   # favours the rare mode
ODE = its.refine.ode(GMM.velocity(PATH), solver="euler", path=PATH)


def _queries(n, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, 2))


def _euler(x, times):
    """The base ODE over the explicit grid ``times``."""
    grid_ode = its.refine.ode(GMM.velocity(PATH), solver="euler", path=PATH, grid=np.asarray(times))
    return its.run(grid_ode, jax.random.key(0), x, num_steps=len(times) - 1).output


def test_split_and_exact_counts():
    x = _queries(4)
    result = its.run(path_search(ODE, REWARD, nfe_budget=200, rounds=2, branch=3, renoise_step=2, path=PATH),
                     jax.random.key(0), x, num_steps=9)
    out = result.output
    # checkpoints 3, 6; one path costs 3 + 3 * (9 - 3) + 3 * 2 * 2 = 33, so N = 200 // 33 = 6.
    np.testing.assert_array_equal(out.info["checkpoints"], [3, 6])
    split = {k: int(v) for k, v in out.split._asdict().items()}
    assert split == dict(nfe_budget=200, nfe_bound=198, prompt_tokens=0, width=18, num_groups=6, group_width=3,
                         num_steps=9, nfe_per_step=1, rounds=2, row_init=0)
    assert int(result.stats.nfe) == 4 * 198 and int(result.stats.verifier_calls) == 4 * 6 * 3 * 2
    assert out.candidates.shape == (4, 18, 2) and int(result.stats.nonfinite) == 0
    np.testing.assert_allclose(REWARD(out.best), out.best_score, rtol=1e-12)
    # A given number of paths and checkpoints; Heun (2 NFE per step) doubles everything.
    heun = its.refine.ode(GMM.velocity(PATH), solver="heun", path=PATH)
    result = its.run(path_search(heun, REWARD, nfe_budget=200, rounds=2, branch=3, renoise_step=2, path=PATH,
                                 num_paths=2, checkpoints=(2, 7)), jax.random.key(0), x, num_steps=9)
    bound = 2 * 2 * (2 + 3 * 7 + 3 * 2 * 2)
    assert int(result.output.split.nfe_bound) == bound and int(result.stats.nfe) == 4 * bound


def test_one_branching_reproduced_by_hand():
    """Record the children; at the second checkpoint c, the children must be: the top N of the N*M
    children at c scored on the x̂₀ of the step that reached c, each re-noised M times from t_c to
    t_{c - Δf} with the step's noise, and run Δf Euler steps back to c."""
    n, m, df, steps, c = 2, 3, 2, 7, 5
    key, x = jax.random.key(4), _queries(3)
    search = path_search(ODE, REWARD, nfe_budget=1000, rounds=2, branch=m, renoise_step=df, path=PATH,
                         num_paths=n, checkpoints=(2, c))
    result = its.run(search, key, x, num_steps=steps, trace=lambda s: s.children.x)
    children = np.asarray(result.trace.state)                          # after each step: (steps, 3*n*m, 2)
    times = np.asarray(grid_times("uniform", PATH)(steps, jnp.float64))
    before = children[c - 2]                                           # the children at grid index c - 1
    reached = _euler(before, times[c - 1:c + 1])                       # the step reaching c
    scores = REWARD(GMM.denoiser(PATH)(before, times[c - 1])).reshape(3, n * m)
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :n]
    parents = np.take_along_axis(np.asarray(reached).reshape(3, n * m, 2), top[..., None], axis=1)
    step_key = jax.random.fold_in(jax.random.split(key)[1], c - 1)
    up = renoise(PATH, jnp.repeat(parents.reshape(-1, 2), m, axis=0), times[c], times[c - df],
                 jax.random.fold_in(step_key, _RENOISE))
    np.testing.assert_allclose(children[c - 1], _euler(up, times[c - df:c + 1]), rtol=1e-10, atol=1e-10)


def test_renoising_keeps_the_marginals():
    """x_t drawn from p_t (the mixture noised to t) and re-noised to t' is a draw of p_{t'}: mean and
    covariance within 5 standard errors."""
    t, t_up, size = 0.3, 0.7, 200_000

    def marginal(s):
        a, b = 1.0 - s, s
        return its.models.GaussianMixture(GMM.weights, a * GMM.means, a**2 * GMM.covs + b**2 * jnp.eye(2))

    x_t = marginal(t).sample(jax.random.key(0), size)
    up = np.asarray(jax.jit(renoise, static_argnums=0)(PATH, x_t, t, t_up, jax.random.key(1)))
    target = marginal(t_up)
    se = np.sqrt(np.diag(target.covariance()) / size)
    np.testing.assert_array_less(np.abs(up.mean(0) - target.mean()), 5 * se)
    cov_se = np.sqrt((np.asarray(target.covariance()) ** 2 + np.outer(np.diag(target.covariance()),
                                                                      np.diag(target.covariance()))) / size)
    np.testing.assert_array_less(np.abs(np.cov(up.T) - target.covariance()), 5 * cov_se)


def test_zero_reward_keeps_the_base_law():
    """With zero reward every selection is a fixed choice of index; over the exact ancestral sampler
    (exact marginals for any number of steps) the returned sample is a draw of the mixture."""
    base = gmm_samplers.exact_ancestral(GMM)._replace(prior=ODE.prior)
    search = path_search(base, lambda x: jnp.zeros(x.shape[0]), nfe_budget=100, rounds=2, branch=2,
                         renoise_step=2, path=PATH, num_paths=2, nfe_per_step=1)
    size = 4000
    best = np.asarray(its.run(search, jax.random.key(2), _queries(size, seed=3), num_steps=6).output.best)
    cov = np.asarray(GMM.covariance())
    np.testing.assert_array_less(np.abs(best.mean(0) - GMM.mean()), 5 * np.sqrt(np.diag(cov) / size))
    cov_se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / size)
    np.testing.assert_array_less(np.abs(np.cov(best.T) - cov), 5 * cov_se)
    # The rare mode's share (0.3) too: a search that selected would change it.
    share = np.mean(best[:, 0] > 0.25)
    assert abs(share - 0.3) < 5 * np.sqrt(0.3 * 0.7 / size)


def test_expected_best_reward_grows_with_the_budget():
    x, key = _queries(400, seed=7), jax.random.key(11)

    def best(budget):
        search = path_search(ODE, REWARD, nfe_budget=budget, rounds=2, branch=2, renoise_step=1, path=PATH)
        return np.asarray(its.run(search, key, x, num_steps=6).output.best_score)

    diff = best(56) - best(14)                       # 4 paths against 1 (one path costs 2 + 2*4 + 2*2*1 = 14)
    assert diff.mean() > 4 * diff.std() / np.sqrt(len(diff)), (diff.mean(), diff.std())


@pytest.mark.parametrize("verdict", [-np.inf, np.nan])
def test_all_rewards_impossible_or_invalid(verdict):
    search = path_search(ODE, lambda x: jnp.full(x.shape[:1], verdict), nfe_budget=40, rounds=2, branch=2,
                         renoise_step=1, path=PATH, num_paths=1)
    result = its.run(search, jax.random.key(0), _queries(3), num_steps=4)
    out = result.output
    assert not np.any(np.asarray(out.valid)) and np.all(np.asarray(out.best_score) == -np.inf)
    assert np.all(np.isfinite(out.best)) and int(result.stats.nonfinite) == 0
    assert int(out.invalid_rewards) == (3 * 1 * 2 * 2 if np.isnan(verdict) else 0)


def test_budget_and_argument_errors():
    run = lambda search, steps=6: its.run(search, jax.random.key(0), _queries(2), num_steps=steps)  # noqa: E731
    kwargs = dict(rounds=2, branch=2, renoise_step=1, path=PATH)
    with pytest.raises(ValueError, match=r"nfe_budget=13 is too small: one path.*give nfe_budget >= 14"):
        run(path_search(ODE, REWARD, nfe_budget=13, **kwargs))
    with pytest.raises(ValueError, match=r"nfe_budget=30 is too small: num_paths=3 paths.*>= 42"):
        run(path_search(ODE, REWARD, nfe_budget=30, num_paths=3, **kwargs))
    with pytest.raises(ValueError, match="renoise_step=3 re-noises above the grid's start"):
        run(path_search(ODE, REWARD, nfe_budget=100, rounds=2, branch=2, renoise_step=3, path=PATH))
    with pytest.raises(ValueError, match="needs num_steps >= rounds \\+ 1 = 4"):
        run(path_search(ODE, REWARD, nfe_budget=100, rounds=3, branch=2, renoise_step=1, path=PATH), steps=3)
    with pytest.raises(ValueError, match="checkpoints must be 2"):
        path_search(ODE, REWARD, nfe_budget=100, checkpoints=(3, 2), **kwargs)
    with pytest.raises(ValueError, match="checkpoints must be 2.*below num_steps=6"):
        run(path_search(ODE, REWARD, nfe_budget=100, checkpoints=(2, 6), **kwargs))
    with pytest.raises(ValueError, match="branch must be an int >= 1"):
        path_search(ODE, REWARD, nfe_budget=100, rounds=2, branch=0, renoise_step=1, path=PATH)
    with pytest.raises(TypeError, match="path must be"):
        path_search(ODE, REWARD, nfe_budget=100, rounds=2, branch=2, renoise_step=1, path="linear")
    with pytest.raises(ValueError, match="prior"):
        path_search(gmm_samplers.exact_ancestral(GMM), REWARD, nfe_budget=100, nfe_per_step=1, **kwargs)


def test_sde_and_ddim_with_eta_on_batches_without_retracing():
    """Stochastic bases: exact NFE, finite outputs, a better mean reward than the base sampler alone, and
    new hyper-parameters (the base's g_scale / η) reuse the compilation."""
    traces = []

    def reward(x):
        traces.append(1)
        return REWARD(x)

    x, key, steps = _queries(200, seed=5), jax.random.key(2), 6
    sde = its.refine.sde(GMM.velocity(PATH), PATH)
    ddim = its.refine.ddpm(GMM.velocity(PATH), PATH)
    for base, new_params in ((sde, {"g_scale": 1.0}), (ddim, {**ddim.params, "eta": 0.5})):
        search = path_search(base, reward, nfe_budget=60, rounds=2, branch=2, renoise_step=1, path=PATH)
        result = its.run(search, key, x, num_steps=steps)
        out = result.output                         # one path: 2 + 2*4 + 2*2*1 = 14 NFE, so N = 4
        assert int(out.split.num_groups) == 4 and int(result.stats.nfe) == 200 * 56
        assert np.all(np.isfinite(out.candidates)) and np.all(np.asarray(out.valid))
        plain = np.asarray(REWARD(its.run(base, key, x, num_steps=steps).output))
        gain = np.asarray(out.best_score) - plain
        assert gain.mean() > 4 * gain.std() / np.sqrt(len(gain))
        count = len(traces)
        other = its.run(search, key, x, num_steps=steps, params=new_params)
        assert len(traces) == count                                    # no retrace
        assert not np.array_equal(other.output.best, out.best)         # the new values were used
