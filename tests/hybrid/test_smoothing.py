"""AR distribution smoothing (``its.hybrid.distribution_smoothing``) against the exact law of a
linear-Gaussian state-space model.

With the exact AR conditionals of the smoothing levels (``its.models.SmoothedSSM``), every level drawn
follows its exact law N(μ, Σ + σ_k² I), and the last (σ = 0) the sequence law itself: moments and mean
log-likelihood within standard errors. The refinement-outer loop runs one AR pass per level: NFE = M per row
per level. A level drawn from too coarse a starting level with a wrong model is measurably off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.hybrid.smoothing import Smoothed, distribution_smoothing, smoothing_pass
from itscale.models.smoothed_sequence import SmoothedSSM
from itscale.models.state_space import LinearGaussianSSM
from tests.hybrid.gaussian_law import gaussian_discrepancy

jax.config.update("jax_enable_x64", True)

D, M, N = 2, 3, 4000
SSM = LinearGaussianSSM(jnp.array([[0.9, 0.2], [-0.1, 0.8]]), jnp.array([[0.3, 0.05], [0.05, 0.2]]),
                        jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.1], [0.1, 0.4]]))
SIGMAS = (2.0, 0.8, 0.0)
LADDER = SmoothedSSM(SSM, SIGMAS, M)
START = Smoothed(jnp.zeros((N, M, D)), jnp.zeros((N,), jnp.int32))
MEAN = np.asarray(SSM.mean(M)).reshape(-1)


def test_each_level_drawn_follows_its_exact_law_and_the_last_is_the_sequence_law():
    result = its.run(distribution_smoothing(LADDER.ar, length=M), jax.random.key(1), START, num_steps=len(SIGMAS),
                     trace=its.core.SaveAt(fn=lambda state: state.value))
    assert int(result.stats.nfe) == N * M * len(SIGMAS) and int(result.stats.nonfinite) == 0
    for k in range(len(SIGMAS)):
        np.testing.assert_array_equal(result.trace.state.level[k], k + 1)
        mean_z, cov_z, ll_z = gaussian_discrepancy(result.trace.state.tokens[k], MEAN, LADDER.level_covariance(k))
        assert mean_z < 4.0 and cov_z < 4.5 and abs(ll_z) < 4.0, k
    log_probs = np.asarray(SSM.log_prob(result.output.value.tokens))
    gap = (log_probs.mean() - float(SSM.expected_log_prob(M))) / (log_probs.std() / np.sqrt(N))
    assert abs(gap) < 4.0


def test_a_level_drawn_without_its_coarser_level_is_off_the_law():
    """The pass conditions on the previous level: feeding level 1's AR model noise-free zeros instead of
    a level-0 draw gives a law far from N(μ, Σ + σ_1² I)."""
    wrong = Smoothed(START.tokens, jnp.ones((N,), jnp.int32))
    value = its.run(smoothing_pass(LADDER.ar), jax.random.key(8), wrong, num_steps=M).output
    assert abs(gaussian_discrepancy(value.tokens, MEAN, LADDER.level_covariance(1))[2]) > 10.0


def test_a_diagonal_scale_is_accepted_and_each_pass_reads_only_earlier_tokens():
    def ar(noisier, tokens, level):
        return jnp.cumsum(tokens, axis=1) - tokens, jnp.full(tokens.shape, 0.5)   # mean: sum of earlier tokens

    value = its.run(smoothing_pass(ar), jax.random.key(9), START, num_steps=M).output
    np.testing.assert_array_equal(value.level, 1)
    assert float(jnp.std(value.tokens[:, 0])) == pytest.approx(0.5, rel=0.05)
    assert float(jnp.std(value.tokens[:, 2])) == pytest.approx(0.5 * np.sqrt(6.0), rel=0.05)  # y2 = 2 y0 + e1/2 + e2/2


@pytest.mark.parametrize("sigmas, match", [((1.0, 1.0), "strictly decreasing"), ((), "non-empty"),
                                           ((1.0, -0.5), ">= 0")])
def test_bad_levels_are_named(sigmas, match):
    with pytest.raises(ValueError, match=match):
        SmoothedSSM(SSM, sigmas, M)


def test_bad_input_is_named_before_compute():
    with pytest.raises(TypeError, match="Smoothed"):
        its.run(distribution_smoothing(LADDER.ar, length=M), jax.random.key(0), START.tokens, num_steps=1)
    with pytest.raises(ValueError, match="x.level"):
        its.run(distribution_smoothing(LADDER.ar, length=M), jax.random.key(0),
                Smoothed(START.tokens, jnp.zeros((2,), jnp.int32)), num_steps=1)
