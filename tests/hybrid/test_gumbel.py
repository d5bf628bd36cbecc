"""Gumbel noise from 64 random bits: accurate tails in float32, and unbiased categorical draws under x32."""

import jax
import jax.numpy as jnp
import numpy as np

from itscale.hybrid.gumbel import categorical, gumbel_from_bits, gumbel_noise
from tests.tokens._exact import chi_square_pvalue


def reference_gumbel(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The same map in float64 numpy: u = 1 − (b + 1/2)·2^-64, g = −log(−log u)."""
    w = (high.astype(np.float64) * 2.0 ** 32 + low.astype(np.float64) + 0.5) * 2.0 ** -64
    complement = ((~high).astype(np.float64) * 2.0 ** 32 + (~low).astype(np.float64) + 0.5) * 2.0 ** -64
    with np.errstate(divide="ignore"):                # the branch not taken may overflow
        return -np.log(np.where(w < 0.5, -np.log1p(-w), -np.log(complement)))


def test_float32_gumbel_keeps_both_tails_to_float32_precision():
    rng = np.random.default_rng(0)
    edges = np.array([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 2, 2 ** 32 - 1], np.uint32)
    high = np.concatenate([np.repeat(edges, edges.size), rng.integers(0, 2 ** 32, 4096, dtype=np.uint32)])
    low = np.concatenate([np.tile(edges, edges.size), rng.integers(0, 2 ** 32, 4096, dtype=np.uint32)])
    with jax.enable_x64(False):
        g32 = np.asarray(gumbel_from_bits(jnp.asarray(high), jnp.asarray(low), jnp.float32))
    g64 = reference_gumbel(high, low)
    assert g32.dtype == np.float32 and np.isfinite(g32).all()
    np.testing.assert_allclose(g32, g64, rtol=2e-6, atol=2e-6)
    # A float32 uniform on a 2^-24 grid caps g at -log(-log(1 - 2^-24)); 64 bits reach far beyond.
    float32_cap = -np.log(-np.log1p(-(2.0 ** -24)))
    assert g32.max() > 2.5 * float32_cap and g32.min() < -np.log(-np.log(2.0 ** -25))


def test_gumbel_noise_has_the_gumbel_law():
    with jax.enable_x64(False):
        g = np.asarray(gumbel_noise(jax.random.key(0), (200_000,), jnp.float32))
    assert g.dtype == np.float32
    edges = np.array([-np.inf, -1.5, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, np.inf])
    cdf = np.exp(-np.exp(-edges))
    assert chi_square_pvalue(np.histogram(g, edges)[0], np.diff(cdf)) > 1e-3


def test_peaked_categorical_under_x32_matches_the_exact_probabilities():
    log_weights = np.array([0.0, -1.5, -4.0, -7.0, -10.0, -13.0], np.float32)
    probs = np.exp(log_weights - np.logaddexp.reduce(log_weights.astype(np.float64)))
    with jax.enable_x64(False):
        draws = categorical(jax.random.key(1), jnp.broadcast_to(jnp.asarray(log_weights), (2 ** 21, 6)))
        draws = np.asarray(draws)
    assert draws.dtype == np.int32
    assert chi_square_pvalue(np.bincount(draws, minlength=6), probs) > 1e-3
    # A row without a finite weight returns index 0 (callers test possibility).
    assert int(categorical(jax.random.key(2), jnp.full((1, 3), -jnp.inf))[0]) == 0
