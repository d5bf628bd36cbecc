"""Time grids: shape, order, exact endpoints, the spacing each kind promises, and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale.paths as paths
from itscale.paths import Grid, check_times, grid

jax.config.update("jax_enable_x64", True)

ALL_PATHS = [paths.linear(), paths.vp(), paths.vp_cosine(), paths.ve(), paths.edm()]


@pytest.mark.parametrize("kind", paths.GRID_KINDS)
@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
@pytest.mark.parametrize("num_steps", [1, 2, 7, 100])
def test_decreasing_with_exact_endpoints(kind, path, num_steps):
    g = Grid(kind, t_min=2e-3, t_max=0.995)
    times = g.times(num_steps, path)
    assert times.shape == (num_steps + 1,) and times.dtype == jnp.float64
    assert float(times[0]) == 0.995 and float(times[-1]) == 2e-3
    assert np.all(np.diff(np.asarray(times)) < 0)


def test_spacings():
    n, t_min, t_max = 10, 1e-3, 0.9
    frac = np.arange(n + 1) / n
    np.testing.assert_allclose(Grid("uniform", t_min, t_max).times(n), t_max + frac * (t_min - t_max),
                               rtol=1e-14)
    np.testing.assert_allclose(Grid("quadratic", t_min, t_max).times(n),
                               t_min + (t_max - t_min) * (1 - frac) ** 2, rtol=1e-14)
    for path in ALL_PATHS:
        lam = path.log_snr(Grid("log_snr", t_min, t_max).times(n, path))
        np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
        times = Grid("karras", t_min, t_max, rho=5.0).times(n, path)
        levels = jnp.exp(-path.log_snr(times) / 2)  # sigma / alpha
        np.testing.assert_allclose(np.diff(levels ** (1 / 5.0)), np.diff(levels ** (1 / 5.0))[0], rtol=1e-9)


def test_karras_on_ve_is_edm_schedule_and_edm_path_is_uniform():
    n, rho = 12, 7.0
    ve = paths.ve(0.002, 80.0)
    sigmas = ve.sigma(Grid("karras", t_min=0.0, t_max=1.0).times(n, ve))
    i = np.arange(n + 1)
    expected = (80.0 ** (1 / rho) + i / n * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(sigmas, expected, rtol=1e-12)
    np.testing.assert_allclose(Grid("karras").times(n, paths.edm()), Grid("uniform").times(n), rtol=1e-12)


def test_karras_accepts_zero_noise_at_t_min():
    times = Grid("karras", t_min=0.0, t_max=0.99).times(8, paths.linear())
    assert float(times[-1]) == 0.0 and np.all(np.diff(np.asarray(times)) < 0)


def test_default_dtype_follows_jax_and_jit():
    with jax.enable_x64(False):
        assert Grid("karras").times(5, paths.vp()).dtype == jnp.float32
    assert Grid().times(5, dtype=jnp.float32).dtype == jnp.float32
    jitted = jax.jit(lambda g, p: g.times(6, p), static_argnums=(0, 1))(Grid("log_snr"), paths.vp())
    np.testing.assert_allclose(jitted, Grid("log_snr").times(6, paths.vp()), rtol=1e-14)


def test_grid_coercion():
    assert grid("karras") == Grid("karras") and hash(grid("karras")) == hash(Grid("karras"))
    g = Grid("quadratic", t_min=0.01)
    assert grid(g) is g
    with pytest.raises(ValueError, match="accepted: 'uniform', 'karras', 'log_snr', 'quadratic'"):
        grid("cosine")


@pytest.mark.parametrize("make, error, argument", [
    (lambda: Grid("linear"), ValueError, "grid kind"),
    (lambda: Grid(t_min=0.5, t_max=0.5), ValueError, "t_min"),
    (lambda: Grid(t_max=1.5), ValueError, "t_max"),
    (lambda: Grid(rho=0.0), ValueError, "rho"),
    (lambda: Grid().times(0), ValueError, "num_steps"),
    (lambda: Grid().times(3.0), TypeError, "num_steps"),
    (lambda: Grid("karras").times(3), TypeError, "path"),
    (lambda: Grid("karras").times(3, paths.linear()), ValueError, "t_max"),
    (lambda: Grid("log_snr", t_min=0.0, t_max=0.9).times(3, paths.vp()), ValueError, "t_min"),
])
def test_bad_arguments_name_the_argument(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


def test_check_times():
    times = check_times("times", [1.0, 0.5, 0.0])
    assert times.dtype == jnp.float64
    for bad, message in (([[1.0, 0.0]], "1-D"), ([0.5], "at least 2"), ([1.0, 0.5, 0.5], r"times\[1\]"),
                         ([0.2, 0.8], "strictly decreasing"), ([1.5, 0.2], r"within \[0, 1\]"),
                         ([1.0, float("nan")], r"within \[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            check_times("times", bad)
    jax.jit(lambda t: check_times("times", t))(jnp.asarray([0.2, 0.8]))  # values are unknown under jit
    with pytest.raises(ValueError, match="my_times"):
        jax.jit(lambda t: check_times("my_times", t))(jnp.ones((2, 2)))
