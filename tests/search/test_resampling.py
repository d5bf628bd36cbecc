"""Resamplers, ESS and log-weight normalisation: unbiasedness, impossible particles, determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from itscale import search

METHODS = sorted(search.RESAMPLERS)
NUM_KEYS = 4000


@functools.partial(jax.jit, static_argnums=(0, 3))
def _counts(method, keys, log_weights, num_samples):
    """Copies of each particle for every key: shape (keys, N)."""
    draw = search.resampler(method)
    indices = jax.vmap(lambda k: draw(k, log_weights, num_samples))(keys)
    return jax.vmap(lambda idx: jnp.bincount(idx, length=log_weights.shape[0]))(indices)


@functools.partial(jax.jit, static_argnums=0)
def _draw_and_summarise(method, key, log_weights, shift):
    """Indices twice from the same key, and ESS / normalisation before and after a shift."""
    draw = search.resampler(method)
    return (draw(key, log_weights), draw(key, log_weights), search.ess(log_weights),
            search.ess(log_weights + shift), jax.scipy.special.logsumexp(search.log_normalize(log_weights)))


@pytest.mark.parametrize("num_samples", [8, 13])
@pytest.mark.parametrize("method", METHODS)
def test_expected_counts_are_num_samples_times_weights(method, num_samples):
    weights = np.array([0.3, 0.02, 0.0, 0.18, 0.25, 0.0, 0.15, 0.1])
    keys = jax.random.split(jax.random.key(1), NUM_KEYS)
    counts = np.asarray(_counts(method, keys, jnp.log(jnp.asarray(weights, jnp.float32)), num_samples))
    assert np.all(counts.sum(axis=1) == num_samples)
    expected = num_samples * weights
    mean, se = counts.mean(axis=0), counts.std(axis=0, ddof=1) / np.sqrt(NUM_KEYS)
    # z-test per particle (Bonferroni over 8 particles at p ~ 1e-4); zero variance means exact counts.
    np.testing.assert_array_less(np.abs(mean - expected), 4.5 * se + 1e-6)
    assert np.all(counts[:, weights == 0] == 0)


def test_multinomial_counts_pass_chi_square():
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    keys = jax.random.split(jax.random.key(2), 500)
    counts = np.asarray(_counts("multinomial", keys, jnp.log(jnp.asarray(weights)), 4)).sum(axis=0)
    _, p_value = stats.chisquare(counts, counts.sum() * weights)
    assert p_value > 1e-3


@pytest.mark.parametrize("method", ["systematic", "residual"])
def test_weights_on_the_lattice_are_copied_exactly(method):
    log_weights = jnp.log(jnp.array([0.5, 0.25, 0.0, 0.25]))
    counts = _counts(method, jax.random.split(jax.random.key(3), 64), log_weights, 4)
    np.testing.assert_array_equal(counts, np.tile([2, 1, 0, 1], (64, 1)))


@pytest.mark.parametrize("method", METHODS)
def test_impossible_particles_never_chosen_among_many_with_a_wide_dynamic_range(method):
    key_w, key_mask, key_draw = jax.random.split(jax.random.key(5), 3)
    log_weights = 30.0 * jax.random.normal(key_w, (1000,))
    impossible = jax.random.bernoulli(key_mask, 0.5, (1000,)).at[:3].set(True).at[-3:].set(True)
    log_weights = jnp.where(impossible, -jnp.inf, log_weights)
    counts = np.asarray(_counts(method, jax.random.split(key_draw, 200), log_weights, 1000))
    assert np.all(counts[:, np.asarray(impossible)] == 0)
    assert np.all(counts.sum(axis=1) == 1000)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-30.0, 30.0), st.just(-np.inf)), min_size=6, max_size=6),
       st.integers(0, 2**31 - 1), st.sampled_from(METHODS))
def test_impossible_particles_are_never_chosen(log_weights, seed, method):
    log_weights = jnp.asarray(log_weights, jnp.float32)
    counts = np.asarray(_counts(method, jax.random.split(jax.random.key(seed), 4), log_weights, 6))
    assert np.all(counts.sum(axis=1) == 6)
    if np.any(np.isfinite(log_weights)):
        assert np.all(counts[:, ~np.isfinite(np.asarray(log_weights))] == 0)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0), min_size=5, max_size=5), st.floats(-50.0, 50.0),
       st.integers(0, 2**31 - 1), st.sampled_from(METHODS))
def test_same_key_same_indices_and_shift_invariance(log_weights, shift, seed, method):
    first, again, ess, shifted_ess, total = _draw_and_summarise(
        method, jax.random.key(seed), jnp.asarray(log_weights, jnp.float32), jnp.float32(shift))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(shifted_ess, ess, rtol=1e-4)
    assert 1.0 - 1e-4 <= float(ess) <= 5.0 + 1e-4
    np.testing.assert_allclose(total, 0.0, atol=1e-5)


def test_ess_hand_checked_values():
    np.testing.assert_allclose(search.ess(jnp.zeros(7)), 7.0, rtol=1e-6)
    np.testing.assert_allclose(search.ess(jnp.array([0.0, -jnp.inf, -jnp.inf])), 1.0, rtol=1e-6)
    np.testing.assert_allclose(search.ess(jnp.log(jnp.array([1.0, 1.0, 0.0, 0.0]))), 2.0, rtol=1e-6)
    # w = (1, 2, 3): (6)^2 / 14
    np.testing.assert_allclose(search.ess(jnp.log(jnp.array([1.0, 2.0, 3.0]))), 36.0 / 14.0, rtol=1e-6)
    np.testing.assert_allclose(search.log_mean_exp(jnp.log(jnp.array([1.0, 2.0, 3.0]))), np.log(2.0),
                               rtol=1e-6)


@pytest.mark.parametrize("dtype, big", [("float32", 3e38), ("float64", 3e38), ("float64", 1.7e308)])
def test_ess_of_log_weights_near_the_largest_float(dtype, big):
    """2·log w overflows there: one dominant finite weight has ESS 1, equal weights ESS N, no NaN."""
    cases = [([big, 0.0, -np.inf], 1.0), ([big, big], 2.0), ([-big, -big, -big], 3.0),
             ([-np.inf, -np.inf], 0.0)]
    with jax.enable_x64(dtype == "float64"):
        for log_weights, expected in cases:
            ess, log_mean = search.resampling.ess_and_log_mean(jnp.asarray(log_weights, dtype))
            assert ess.dtype == dtype and float(ess) == expected, (log_weights, ess)
            assert not np.isnan(log_mean)
            np.testing.assert_allclose(log_mean, np.max(log_weights) - np.log(len(log_weights)), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-30.0, 30.0), st.just(-np.inf)), min_size=1, max_size=6),
       st.one_of(st.floats(-3.3e38, 3.3e38), st.sampled_from([3e38, -3e38, 1e30])))
def test_ess_is_invariant_to_any_shift(log_weights, shift):
    """ess(l + c) == ess(l) for shifts c up to the largest float32, l the exact difference (l + c) − c."""
    shifted = np.asarray(log_weights, np.float32) + np.float32(shift)
    exact = shifted.astype(np.float64) - np.float64(np.float32(shift))
    np.testing.assert_allclose(search.ess(jnp.asarray(shifted)), search.ess(jnp.asarray(exact, jnp.float32)),
                               rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_all_impossible_falls_back_to_uniform_without_nan(method):
    log_weights = jnp.full(5, -jnp.inf)
    assert bool(search.all_impossible(log_weights))
    assert float(search.ess(log_weights)) == 0.0
    np.testing.assert_allclose(search.log_normalize(log_weights), np.full(5, -np.log(5.0)), rtol=1e-6)
    assert float(search.log_mean_exp(log_weights)) == -np.inf
    counts = np.asarray(_counts(method, jax.random.split(jax.random.key(4), 2000), log_weights, 5))
    assert np.all(counts.sum(axis=1) == 5)
    np.testing.assert_allclose(counts.mean(axis=0), np.ones(5), atol=0.1)
    nan_weights = jnp.array([0.0, jnp.nan, 1.0])  # NaN reads as an impossible particle
    assert not bool(search.all_impossible(nan_weights))
    assert np.all(np.isfinite(search.log_normalize(nan_weights)[jnp.array([0, 2])]))
    np.testing.assert_allclose(search.ess(nan_weights), search.ess(jnp.array([0.0, -jnp.inf, 1.0])))


def test_unknown_resampler_is_named():
    with pytest.raises(ValueError, match="resample 'bogus'.*systematic"):
        search.resampler("bogus")
    with pytest.raises(TypeError, match="num_samples"):
        search.systematic(jax.random.key(0), jnp.zeros(3), num_samples=2.5)


def test_ess_and_log_mean_match_direct_formulas_and_read_nan_as_impossible():
    cases = [np.array([0.3, -1.2, 2.0, -np.inf, 0.0]), np.full(5, -np.inf),
             np.array([np.nan, 0.5, -np.inf, 1.0, 1.0])]
    for log_weights in cases:
        ess, log_mean = search.resampling.ess_and_log_mean(jnp.asarray(log_weights, jnp.float32))
        w = np.exp(np.nan_to_num(log_weights, nan=-np.inf))
        expected_ess = w.sum() ** 2 / (w ** 2).sum() if w.sum() > 0 else 0.0
        np.testing.assert_allclose(ess, expected_ess, rtol=1e-5)
        np.testing.assert_allclose(search.ess(jnp.asarray(log_weights, jnp.float32)), expected_ess, rtol=1e-5)
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(log_mean, np.log(w.mean()), rtol=1e-5)
