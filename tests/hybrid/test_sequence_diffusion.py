"""Per-token sequence samplers against the exact law of a linear-Gaussian state-space model.

The model is exact (``LinearGaussianSSM.denoiser``: E[x | z] for tokens at different noise levels), so
what is left is each sampler's discretisation error. Diffusion forcing at u = 0 is the DDPM sampler of
the flattened sequence (``its.refine.ddpm`` with the same exact denoiser), draw for draw. With more
levels the moments and the mean exact log-likelihood of samples approach the law's (the log-likelihood
gap to −½ d M (1 + log 2π) − ½ log det Σ shrinks), and at the largest budget they agree within standard
errors, for the full-sequence, autoregressive and rolling schedules and AR-diffusion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.hybrid.sequence_diffusion import (ar_diffusion, ar_diffusion_times, diffusion_forcing, mar, mar_times,
                                               pyramid_levels, pyramid_steps, rolling_diffusion)
from itscale.models.state_space import LinearGaussianSSM
from tests.hybrid.gaussian_law import gaussian_discrepancy

jax.config.update("jax_enable_x64", True)

D, M, N = 2, 4, 4000
SSM = LinearGaussianSSM(jnp.array([[0.9, 0.2], [-0.1, 0.8]]), jnp.array([[0.3, 0.05], [0.05, 0.2]]),
                        jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.1], [0.1, 0.4]]))
PATH = its.paths.linear()
DENOISER = SSM.denoiser(PATH)
MEAN = np.asarray(SSM.mean(M)).reshape(-1)
COV = np.asarray(SSM.covariance(M))
NOISE = jax.random.normal(jax.random.key(0), (N, M, D), jnp.float64)


def discrepancy(x):
    """(max |mean error| / SE, max |cov error| / SE, log-likelihood gap / SE) against the SSM's law."""
    return gaussian_discrepancy(x, MEAN, COV)


def test_pyramid_extremes_are_full_sequence_and_autoregressive():
    levels = 3
    full = pyramid_levels(levels, 0, M)
    np.testing.assert_array_equal(full, np.repeat(np.arange(levels, -1, -1)[:, None], M, axis=1))
    ar = pyramid_levels(levels, levels, M)
    assert ar.shape == (pyramid_steps(levels, levels, M) + 1, M) == (levels * M + 1, M)
    for m in range(M):                            # token m moves only while every other token is at 0 or S
        expected = np.clip(levels * (m + 1) - np.arange(levels * M + 1), 0, levels)
        np.testing.assert_array_equal(ar[:, m], expected)
    moving = np.diff(ar, axis=0) != 0
    assert np.all(moving.sum(axis=1) == 1)        # one token at a time: autoregressive


def test_rolling_is_the_pyramid_with_a_sliding_window():
    window, n = 2, 3
    levels = pyramid_levels(window * n, n, M)
    assert len(levels) - 1 == n * (window + M - 1)
    in_window = (levels > 0) & (levels < window * n)
    assert in_window.sum(axis=1).max() == window           # at most W tokens partly noisy at once
    finished = (levels == 0).sum(axis=1)
    np.testing.assert_array_equal(finished[n * window::n], np.arange(1, M + 1))   # one token per shift


def test_ar_diffusion_times_run_from_noise_to_data_earlier_tokens_first():
    times = ar_diffusion_times(12, M)
    np.testing.assert_allclose(times[0], 1.0)
    np.testing.assert_allclose(times[-1], 0.0)
    assert np.all(np.diff(times, axis=0) <= 1e-12)         # every token only denoises
    assert np.all(np.diff(times, axis=1) >= -1e-12)        # earlier tokens are less noisy
    assert np.any(np.diff(times[1:-1], axis=1) > 0)


def test_mar_left_to_right_is_the_autoregressive_pyramid_and_groups_follow_the_order():
    np.testing.assert_array_equal(mar_times(np.arange(M), 3), pyramid_levels(3, 3, M) / 3)
    times = mar_times((2, 0, 3, 1), 2, tokens_per_step=2)
    assert times.shape == (2 * 2 + 1, M)
    np.testing.assert_array_equal(times[2], [0.0, 1.0, 0.0, 1.0])      # tokens 2 and 0 done, 3 and 1 untouched
    moving = np.diff(times, axis=0) != 0
    np.testing.assert_array_equal(moving[:2], [[True, False, True, False]] * 2)
    for bad in ((0, 1, 1, 3), (1, 2, 3), np.array([0.0, 1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match="order must be a permutation"):
            mar(DENOISER, PATH, steps_per_token=2, order=bad)
    with pytest.raises(ValueError, match="order has 3 tokens"):
        its.run(mar(DENOISER, PATH, steps_per_token=2, order=(2, 0, 1)), jax.random.key(0), NOISE[:4], num_steps=6)
    with pytest.raises(ValueError, match="num_steps must be 8"):
        its.run(mar(DENOISER, PATH, steps_per_token=2), jax.random.key(0), NOISE[:4], num_steps=7)


def test_full_sequence_forcing_is_ddpm_on_the_flat_sequence():
    steps = 20
    ours = its.run(diffusion_forcing(DENOISER, PATH, levels=steps, uncertainty=0), jax.random.key(1), NOISE,
                   num_steps=steps)
    flat = lambda z, t: DENOISER(z.reshape(-1, M, D), jnp.full((M,), t)).reshape(z.shape)   # noqa: E731
    house = its.run(its.refine.ddpm(flat, PATH, prediction="x0"), jax.random.key(1), NOISE.reshape(N, -1),
                    num_steps=steps, params={"eta": 1.0})
    np.testing.assert_allclose(np.asarray(ours.output).reshape(N, -1), np.asarray(house.output), atol=1e-9)
    assert int(ours.stats.nfe) == N * steps


SAMPLERS = {
    "full-sequence": lambda s: (diffusion_forcing(DENOISER, PATH, levels=s, uncertainty=0), s),
    "pyramid": lambda s: (diffusion_forcing(DENOISER, PATH, levels=s, uncertainty=s / 4),
                          pyramid_steps(s, s / 4, M)),
    "autoregressive": lambda s: (diffusion_forcing(DENOISER, PATH, levels=s, uncertainty=s), s * M),
    "rolling": lambda s: (rolling_diffusion(DENOISER, PATH, window=2, steps_per_token=s // 2), s // 2 * (M + 1)),
    "ar-diffusion": lambda s: (ar_diffusion(DENOISER, PATH), 2 * s),
    "mar": lambda s: (mar(DENOISER, PATH, steps_per_token=s // 2, order=(2, 0, 3, 1), tokens_per_step=2), s),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_converge_to_the_exact_sequence_law(name):
    gaps = []
    for levels in (10, 40, 400):
        sampler, steps = SAMPLERS[name](levels)
        result = its.run(sampler, jax.random.key(2), NOISE, num_steps=steps)
        assert int(result.stats.nfe) == N * steps
        gaps.append(discrepancy(result.output))
    ll_gaps = [abs(g[2]) for g in gaps]
    assert ll_gaps[0] > ll_gaps[1] > 4.0             # coarse schedules are measurably off the law
    mean_z, cov_z, ll_z = gaps[-1]
    assert mean_z < 4.0 and cov_z < 4.5 and abs(ll_z) < 4.0


def test_bad_budgets_raise():
    with pytest.raises(ValueError, match="num_steps must be 13"):
        its.run(diffusion_forcing(DENOISER, PATH, levels=3, uncertainty=3.5), jax.random.key(0), NOISE[:2],
                num_steps=5)
    with pytest.raises(ValueError, match="levels"):
        diffusion_forcing(DENOISER, PATH, levels=0, uncertainty=0)
    with pytest.raises(ValueError, match="uncertainty"):
        diffusion_forcing(DENOISER, PATH, levels=2, uncertainty=-1)
    with pytest.raises(ValueError, match="window"):
        rolling_diffusion(DENOISER, PATH, window=0)
    with pytest.raises(ValueError, match="eta"):
        its.run(ar_diffusion(DENOISER, PATH), jax.random.key(0), NOISE[:2], num_steps=3, params={"eta": 2.0})
