"""SMC behaviour: impossible particles, reduction to the base sampler, determinism, no retrace, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import itscale as its
from itscale.search import potentials
from tests.search import gmm_samplers

N, STEPS = 16, 6
# Base: Euler-Maruyama with the exact score of N(0.3, 0.25 I) data (tests/search/gmm_samplers.py), so these
# behaviour tests do not depend on itscale.refine; test_smc_exact.py covers its.refine.sde.
BASE = gmm_samplers.euler_maruyama(its.models.GaussianMixture(jnp.array([1.0]), jnp.array([[0.3, 0.3]]),
                                                              0.25 * jnp.eye(2)[None]))
NOISE = jax.random.normal(jax.random.key(7), (N, 2))


def _reward(x):
    return -jnp.sum((x - 0.5) ** 2, axis=-1)


def _run(sampler, key=jax.random.key(0), x=NOISE, params=None, **kwargs):
    return its.run(sampler, key, x, num_steps=STEPS, params=params, **kwargs)


def test_counts_nfe_and_verifier_calls_and_reports_per_step_info():
    result = _run(its.search.smc(BASE, _reward, num_particles=N, ess_threshold=1.0), trace=1)
    assert int(result.stats.nfe) == N * STEPS
    assert int(result.stats.verifier_calls) == N * STEPS
    assert int(result.stats.nonfinite) == 0
    info = result.trace.info
    assert info["ess"].shape == (STEPS,)
    np.testing.assert_array_equal(info["resampled"], [True] * (STEPS - 1) + [False])  # never after the last
    assert int(result.output.info["num_resamples"]) == STEPS - 1
    np.testing.assert_allclose(jax.scipy.special.logsumexp(result.output.log_weights), 0.0, atol=1e-5)
    np.testing.assert_allclose(info["log_normalizer"][-1], result.output.log_normalizer, rtol=1e-6)


@pytest.mark.parametrize("ess_threshold", [0.0, 1.0])
def test_one_particle_reproduces_the_base_sampler(ess_threshold):
    x = NOISE[:1]
    base = _run(BASE, x=x).output
    out = _run(its.search.smc(BASE, _reward, num_particles=1, ess_threshold=ess_threshold), x=x).output
    # The same draws; the values agree to rounding (XLA may fuse the two programs differently).
    np.testing.assert_allclose(out.particles, base, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.log_weights, [0.0])
    np.testing.assert_allclose(out.log_normalizer, _reward(base)[0], rtol=1e-5)


def test_without_resampling_particles_are_the_base_samples_weighted_by_the_final_reward():
    base = _run(BASE).output
    out = _run(its.search.smc(BASE, _reward, num_particles=N, ess_threshold=0.0)).output
    np.testing.assert_allclose(out.particles, base, rtol=1e-6, atol=1e-7)
    assert int(out.info["num_resamples"]) == 0
    # Importance sampling: the potentials telescope to exp(lam * r(x0)) for every particle.
    np.testing.assert_allclose(out.log_weights, jax.nn.log_softmax(_reward(base)), rtol=1e-4, atol=1e-5)


def test_same_key_same_bits_and_another_key_differs():
    steered = its.search.smc(BASE, _reward, num_particles=N, ess_threshold=0.9)
    first, again = _run(steered).output, _run(steered).output
    chex.assert_trees_all_equal(first, again)
    other = _run(steered, key=jax.random.key(1)).output
    assert not np.array_equal(first.particles, other.particles)


def test_new_lam_and_threshold_do_not_retrace():
    traces = []

    def reward(x):
        traces.append(1)
        return _reward(x)

    steered = its.search.smc(BASE, reward, num_particles=N)
    first = _run(steered).output
    count = len(traces)
    params = its.search.SMCParams(base=BASE.params, lam=3.0, ess_threshold=0.9)
    second = _run(steered, params=params).output
    assert len(traces) == count
    assert not np.array_equal(first.log_weights, second.log_weights)


def test_all_impossible_rewards_give_no_nan_and_are_reported():
    steered = its.search.smc(BASE, lambda x: jnp.full(x.shape[:1], -jnp.inf), num_particles=N)
    result = _run(steered)
    out = result.output
    assert bool(out.info["all_impossible"]) and bool(out.info["ever_all_impossible"])
    assert float(out.log_normalizer) == -np.inf
    assert float(out.info["ess"]) == 0.0
    np.testing.assert_allclose(out.log_weights, np.full(N, -np.log(N)), rtol=1e-6)
    assert np.all(np.isfinite(out.particles))
    assert int(result.stats.nonfinite) == 0  # impossible particles are legal, not faults


def test_impossible_and_invalid_particles_are_dropped_and_counted():
    def reward(x):
        r = _reward(x)
        r = jnp.where(x[:, 0] < 0, -jnp.inf, r)  # impossible half-plane
        return r.at[0].set(jnp.nan)              # an invalid verdict, counted

    result = _run(its.search.smc(BASE, reward, num_particles=N, potential="max", ess_threshold=1.0))
    out = result.output
    assert int(result.stats.nonfinite) == 0
    assert int(out.invalid_rewards) == STEPS
    assert not bool(out.info["all_impossible"]) and np.isfinite(float(out.log_normalizer))
    dead = np.array(out.particles[:, 0] < 0)
    dead[0] = True  # its last verdict was NaN
    assert np.all(np.asarray(out.log_weights)[dead] == -np.inf)
    assert np.all(np.isfinite(np.asarray(out.log_weights)[~dead]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20.0, 5.0), min_size=1, max_size=8), st.floats(-3.0, 3.0),
       st.sampled_from(sorted(potentials.POTENTIALS)))
def test_every_potential_multiplies_to_exp_lam_final_reward(rewards, lam, name):
    """Ψ increments along any reward sequence sum to lam * r(x0): the product condition of FK steering."""
    rewards = np.asarray(rewards, np.float32)
    update = potentials.potential(name)
    state = potentials.initial(name, 1, jnp.float32)
    alive = jnp.ones(1, bool)
    total = 0.0
    for i, r in enumerate(rewards):
        r = jnp.full(1, r)
        new = potentials.final(r, lam) if i == len(rewards) - 1 else update(state, r, lam)
        total += float(potentials.increment(state, new, alive)[0])
        state = new
    scale = 1.0 + abs(lam) * len(rewards) * np.abs(rewards).sum()  # size of the partial sums (float32)
    np.testing.assert_allclose(total, lam * rewards[-1], rtol=1e-5, atol=1e-6 * scale)


def test_potentials_by_hand():
    lam, prev = 2.0, potentials.PotentialState(jnp.array([1.0]), jnp.array([0.5]))
    r = jnp.array([3.0])
    assert float(potentials.potential("difference")(prev, r, lam).log_potential[0]) == 6.0
    assert float(potentials.potential("max")(prev, r, lam).log_potential[0]) == 0.5 + 6.0
    assert float(potentials.potential("sum")(prev, r, lam).log_potential[0]) == 0.5 + 8.0
    assert float(potentials.potential("immediate")(prev, r, lam).log_potential[0]) == 0.5 + 6.0
    assert float(potentials.tilt(0.0, jnp.array(-jnp.inf))) == -np.inf  # impossible whatever lam


def test_bad_static_arguments_are_named():
    with pytest.raises(ValueError, match="potential 'best'"):
        its.search.smc(BASE, _reward, num_particles=N, potential="best")
    with pytest.raises(ValueError, match="resample 'bogus'"):
        its.search.smc(BASE, _reward, num_particles=N, resample="bogus")
    with pytest.raises(ValueError, match="num_particles"):
        its.search.smc(BASE, _reward, num_particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        its.search.smc(BASE, _reward, num_particles=N, ess_threshold=1.5)
    with pytest.raises(TypeError, match="reward_fn"):
        its.search.smc(BASE, "reward", num_particles=N)
    steered = its.search.smc(BASE, _reward, num_particles=N)
    with pytest.raises(ValueError, match="num_particles=16"):
        _run(steered, x=NOISE[:5])
    with pytest.raises(ValueError, match="reward_fn must return rewards of shape"):
        _run(its.search.smc(BASE, lambda x: x, num_particles=N))
