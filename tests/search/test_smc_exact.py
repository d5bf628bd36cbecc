"""SMC / FK steering against exact answers: log E_p[exp(r)] and the tilted mean of a Gaussian mixture.

The tilt r(x) = -0.5 (x - c)^T A (x - c) keeps p(x) exp(r(x)) a Gaussian mixture (``gmm.tilted``), so
log Z and the target's mean are exact. log Z-hat is unbiased for Z (not log Z): the tests check
mean(Z-hat / Z) = 1 and mean(log Z-hat) = log Z within a few standard errors over 20 seeds, with
resampling happening (ESS threshold 0.8). Figures at the time of writing (N = 256, 20 seeds):
exact ancestral base, 20 steps: |log Z error| <= 0.03 nats (SE about 0.02), about 9.5 resamplings per run;
its.refine.sde (Euler-Maruyama, 50 steps): error about 0.01 nats (SE 0.02) plus the discretisation
bias of the base sampler itself (about 0.02-0.03 nats, measured without resampling).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from tests.search import gmm_samplers

jax.config.update("jax_enable_x64", True)

NUM_SEEDS, NUM_PARTICLES = 20, 256
GMM = its.models.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0, 0.0], [1.5, 0.5]]),
                                 jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.4, 0.0], [0.0, 0.6]]]))
CENTER, PRECISION = jnp.array([-0.5, 0.5]), jnp.array([[1.6, 0.4], [0.4, 1.0]])
REWARD = gmm_samplers.quadratic_reward(CENTER, PRECISION)


def _runs(sampler, num_steps, *, num_particles=NUM_PARTICLES, seed=0, **smc_kwargs):
    """SMC outputs of NUM_SEEDS independent runs (vmapped over keys: one compilation)."""
    steered = its.search.smc(sampler, REWARD, num_particles=num_particles, **smc_kwargs)

    def one(key):
        noise = jax.random.normal(jax.random.fold_in(key, 1), (num_particles, GMM.dim))
        return its.run(steered, key, noise, num_steps=num_steps).output

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), NUM_SEEDS))


def _check_log_normalizer(out, *, slack=0.0):
    _, log_z = GMM.tilted(CENTER, PRECISION)
    log_z_hat = np.asarray(out.log_normalizer)
    se = log_z_hat.std(ddof=1) / np.sqrt(NUM_SEEDS)
    assert abs(log_z_hat.mean() - float(log_z)) < 3.0 * se + slack, (log_z_hat.mean(), float(log_z), se)
    ratio = np.exp(log_z_hat - float(log_z))  # Z-hat / Z: unbiased for 1
    assert abs(ratio.mean() - 1.0) < 3.0 * ratio.std(ddof=1) / np.sqrt(NUM_SEEDS) + slack


def _check_tilted_mean(out, *, slack=0.0):
    tilted, _ = GMM.tilted(CENTER, PRECISION)
    means = np.einsum("sn,sni->si", np.exp(out.log_weights), out.particles)
    se = means.std(axis=0, ddof=1) / np.sqrt(NUM_SEEDS)
    np.testing.assert_array_less(np.abs(means.mean(axis=0) - np.asarray(tilted.mean())), 3.5 * se + slack)


@functools.cache
def _exact_base_runs():
    return _runs(gmm_samplers.exact_ancestral(GMM), 20, ess_threshold=0.8)


def test_log_normalizer_is_unbiased_over_an_exact_base_sampler():
    out = _exact_base_runs()
    assert float(np.mean(out.info["num_resamples"])) > 3  # resampling is exercised
    assert not np.any(out.info["all_impossible"]) and int(np.sum(out.invalid_rewards)) == 0
    _check_log_normalizer(out)


def test_weighted_particles_have_the_tilted_mean():
    _check_tilted_mean(_exact_base_runs())


def test_smc_over_refine_sde_matches_the_tilt():
    path = its.paths.linear()
    base = its.refine.sde(GMM.velocity(path), path, grid=its.paths.Grid("uniform", t_min=0.0))
    out = _runs(base, 50, ess_threshold=0.8, seed=1)
    assert float(np.mean(out.info["num_resamples"])) > 2
    # 0.05 nats / 0.03 allow for the Euler-Maruyama discretisation of the base sampler itself.
    _check_log_normalizer(out, slack=0.05)
    _check_tilted_mean(out, slack=0.03)


def test_base_sampler_exact_in_one_step_gives_monte_carlo_log_z():
    out = _runs(gmm_samplers.one_shot(GMM), 1, num_particles=1024, seed=2)
    assert int(np.max(out.info["num_resamples"])) == 0  # the last step never resamples
    _check_log_normalizer(out)
    _check_tilted_mean(out)
