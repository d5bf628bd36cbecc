"""Counter-based token noise: the unrolled Threefry-2x32 equals JAX's, the Gumbel and uniform draws
follow their laws (KS), draws at distinct (row, position, stream, index) are uncorrelated, and a row's
noise depends on its key and position only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from scipy import stats

from itscale.tokens import noise

jax.config.update("jax_enable_x64", True)


def test_threefry_equals_jax_and_the_published_test_vector():
    key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
    counter = jax.random.bits(jax.random.key(1), (2, 4096), jnp.uint32)
    x0, x1 = jax.jit(noise.threefry2x32)((key[0], key[1]), (counter[0], counter[1]))
    np.testing.assert_array_equal(np.concatenate([x0, x1]), threefry_2x32(key, counter.reshape(-1)))
    pi = noise.threefry2x32((key[0], key[1]), (jnp.uint32(0x243F6A88), jnp.uint32(0x85A308D3)))
    assert [int(w) for w in pi] == [0xC4923A9C, 0x483DF7A0]           # Random123's known answer


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_gumbel_and_uniform_draws_follow_their_laws(dtype):
    keys = noise.row_keys(jax.random.key(0), 64)
    positions = jnp.broadcast_to(jnp.arange(40), (64, 40))
    g = np.asarray(jax.jit(noise.gumbel_at, static_argnums=(2, 3))(keys, positions, 50, dtype))
    assert g.shape == (64, 40, 50) and g.dtype == dtype and np.all(np.isfinite(g))
    assert stats.kstest(g.ravel(), stats.gumbel_r.cdf).pvalue > 1e-3
    assert stats.kstest(g.ravel(), lambda x: stats.gumbel_r.cdf(x, loc=0.02)).pvalue < 1e-3   # the test has power
    u = np.asarray(noise.uniform_at(keys, positions, dtype))
    assert u.shape == (64, 40) and u.min() > 0 and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    for a, b in ((g[:, :, :-1], g[:, :, 1:]), (g[:, :-1], g[:, 1:]), (g[:-1], g[1:])):  # index, position, row
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02


def test_noise_depends_on_row_key_position_and_stream_only():
    keys = noise.row_keys(jax.random.key(3), 8)
    positions = jnp.tile(jnp.arange(5), (8, 1))
    draw = jax.jit(noise.gumbel_at, static_argnums=(2, 3, 4))
    full = draw(keys, positions, 7, jnp.float32, noise.TOKEN)
    np.testing.assert_array_equal(draw(keys[5:6], positions[5:6, 2:4], 7, jnp.float32, noise.TOKEN), full[5:6, 2:4])
    assert not np.any(np.isclose(draw(keys, positions, 7, jnp.float32, noise.DRAFT), full))
    assert not np.any(np.isclose(full[:, 1:], full[:, :1])) and not np.any(np.isclose(full[1:], full[:1]))
    rbg = jax.random.key(3, impl="rbg")                                # wider key data is folded in
    wide = noise.gumbel_at(noise.row_keys(rbg, 8), positions, 7, jnp.float32)
    assert wide.shape == full.shape and np.all(np.isfinite(wide)) and not np.any(np.isclose(wide, full))
