"""MALA leaves an exact mixture law invariant at a step size where ULA is visibly biased, reaches it from
far away, counts one NFE per row per step (plus init), and rejects bad input by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import itscale as its

GMM = its.models.GaussianMixture(weights=jnp.array([0.3, 0.7]), means=jnp.array([[-1.0, 0.0], [1.0, 0.5]]),
                                 covs=jnp.stack([0.4 * jnp.eye(2), 0.3 * jnp.eye(2)]))
N = 8000


def _ks(samples, reference):
    return min(stats.ks_2samp(np.asarray(samples)[:, i], np.asarray(reference)[:, i]).pvalue for i in range(2))


def test_metropolis_adjustment_keeps_the_exact_law_where_ula_drifts():
    start, reference = GMM.sample(jax.random.key(0), N), GMM.sample(jax.random.key(1), N)
    adjusted = its.run(its.refine.mala(GMM.log_prob, step_size=0.3), jax.random.key(2), start, num_steps=20)
    unadjusted = its.run(its.refine.mala(GMM.log_prob, step_size=0.3, adjusted=False), jax.random.key(2), start,
                         num_steps=20)
    assert _ks(adjusted.output, reference) > 1e-3
    assert _ks(unadjusted.output, reference) < 1e-10
    assert int(adjusted.stats.nfe) == N * (20 + 1)                 # value and gradient once per row per step


def test_chains_started_far_away_reach_the_law_and_step_size_is_traced():
    reference = GMM.sample(jax.random.key(1), 4000)
    sampler = its.refine.mala(GMM.log_prob, step_size=0.1)
    far = jnp.full((2000, 2), 3.0)
    result = its.run(sampler, jax.random.key(3), far, num_steps=300)
    assert _ks(result.output, reference) > 1e-3
    again = its.run(sampler, jax.random.key(3), far, num_steps=300, params={"step_size": 0.2})
    assert not np.allclose(again.output, result.output)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="step_size"):
        its.refine.mala(GMM.log_prob, step_size=0.0)
    with pytest.raises(ValueError, match="step_size"):
        its.run(its.refine.mala(GMM.log_prob), jax.random.key(0), jnp.zeros((4, 2)), num_steps=2,
                params={"step_size": -1.0})
    with pytest.raises(ValueError, match=r"step_size.*\(0.0, inf\]"):   # 0 would freeze the chain
        its.run(its.refine.mala(GMM.log_prob), jax.random.key(0), jnp.zeros((4, 2)), num_steps=2,
                params={"step_size": 0.0})
    with pytest.raises(ValueError, match="log_prob_fn must return shape"):
        its.run(its.refine.mala(lambda x: jnp.sum(x)), jax.random.key(0), jnp.zeros((4, 2)), num_steps=2)
    with pytest.raises(ValueError, match="x must be a floating array"):
        its.run(its.refine.mala(GMM.log_prob), jax.random.key(0), jnp.zeros((4, 2), jnp.int32), num_steps=2)
