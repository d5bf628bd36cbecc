"""SMC normalisers against exact answers: Ẑ (not log Ẑ) is unbiased for Z, and one large run is accurate.

Problem: the mixture and mild tilt of ``test_smc_exact.py`` (``exact_twist.problem``), exact scores on the
linear path. ``test_smc_exact.py`` checks FK steering's log Ẑ and tilted mean over 20 seeds × 256
particles; here Ẑ's unbiasedness is checked with many small runs (200 seeds × 64 particles, one vmapped
run), for FK steering over the exact ancestral sampler (target Z exact) and for FK steering and TDS over
the DDPM chain. The DDPM chain's own law differs from the mixture by its discretisation (log Z off by
about 0.03 nats at 20 steps), so its Z is measured by plain Monte Carlo of the chain (2^16 draws) and
the SMC means are compared with it within 3 combined standard errors.
"""

import functools

import jax
import numpy as np
import pytest

import itscale as its
from itscale.search.twisted import twisted_smc
from tests.search import exact_twist, gmm_samplers

jax.config.update("jax_enable_x64", True)

P = exact_twist.problem()
VELOCITY = P.gmm.velocity(P.path)
SEEDS, PARTICLES, STEPS = 200, 64, 20


def _outputs(sampler, *, num_seeds=SEEDS, num_particles=PARTICLES, num_steps=STEPS, seed=0):
    def one(key):
        noise = jax.random.normal(jax.random.fold_in(key, 1), (num_particles, P.gmm.dim))
        return its.run(sampler, key, noise, num_steps=num_steps).output

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), num_seeds))


def _z_mean_and_se(out):
    z_hat = np.exp(np.asarray(out.log_normalizer))
    return z_hat.mean(), z_hat.std(ddof=1) / np.sqrt(z_hat.size)


@functools.cache
def _ddpm_chain_z():
    """Z of the DDPM chain itself, E[exp(r(x_0))] over 2^16 of its draws, and its standard error."""
    n = 2**16
    x0 = its.run(its.refine.ddpm(VELOCITY, P.path), jax.random.key(99), jax.random.normal(
        jax.random.key(98), (n, P.gmm.dim)), num_steps=STEPS).output
    values = np.exp(np.asarray(P.reward(x0)))
    return values.mean(), values.std(ddof=1) / np.sqrt(n)


def test_fk_steering_z_hat_is_unbiased_over_an_exact_sampler():
    out = _outputs(its.search.smc(gmm_samplers.exact_ancestral(P.gmm), P.reward, num_particles=PARTICLES,
                                  ess_threshold=0.8), num_steps=10)
    assert float(np.mean(out.info["num_resamples"])) > 2
    mean, se = _z_mean_and_se(out)
    z = float(np.exp(P.gmm.tilted(P.center, P.precision)[1]))
    assert abs(mean - z) < 3.0 * se, (mean, z, se)


def test_fk_steering_and_tds_z_hat_are_unbiased_for_the_ddpm_chain():
    z, z_se = _ddpm_chain_z()
    # The chain's Z is near the mixture's: only its discretisation separates them.
    assert abs(np.log(z) - float(P.gmm.tilted(P.center, P.precision)[1])) < 0.1
    fk = _outputs(its.search.smc(its.refine.ddpm(VELOCITY, P.path), P.reward, num_particles=PARTICLES))
    tds = _outputs(twisted_smc(VELOCITY, P.path, P.reward, num_particles=PARTICLES), seed=1)
    for out in (fk, tds):
        assert float(np.mean(out.info["num_resamples"])) > 0.2
        mean, se = _z_mean_and_se(out)
        assert abs(mean - z) < 3.0 * np.hypot(se, z_se), (mean, z, se, z_se)


@pytest.mark.slow   # tests/search/test_smc_exact.py checks FK steering's log Z and tilted mean over 20 x 256 particles
def test_one_large_run_has_the_exact_log_z_and_tilted_mean():
    tilted, log_z = P.gmm.tilted(P.center, P.precision)
    n, key = 4096, jax.random.key(7)
    noise = jax.random.normal(jax.random.key(8), (n, P.gmm.dim))
    for sampler in (its.search.smc(its.refine.ddpm(VELOCITY, P.path), P.reward, num_particles=n),
                    twisted_smc(VELOCITY, P.path, P.reward, num_particles=n)):
        out = its.run(sampler, key, noise, num_steps=STEPS).output
        assert abs(float(out.log_normalizer) - float(log_z)) < 0.25
        mean = np.exp(np.asarray(out.log_weights)) @ np.asarray(out.particles)
        assert np.abs(mean - np.asarray(tilted.mean())).max() < 0.15
