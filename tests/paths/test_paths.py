"""Paths: closed-form derivatives vs autodiff, exact log-SNR inverse, endpoints, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale.paths as paths

jax.config.update("jax_enable_x64", True)

ALL_PATHS = [paths.linear(), paths.vp(), paths.vp(beta_min=1.0, beta_max=1.0), paths.vp_cosine(),
             paths.ve(), paths.edm(), paths.edm(sigma_min=0.01, sigma_max=10.0, rho=3.0)]
INTERIOR = np.linspace(0.01, 0.99, 41)


def _ids(p):
    return repr(p)


@pytest.mark.parametrize("path", ALL_PATHS, ids=_ids)
def test_derivatives_equal_autodiff(path):
    t = jnp.asarray(INTERIOR)
    for value, derivative in ((path.alpha, path.alpha_dot), (path.sigma, path.sigma_dot),
                              (path.log_snr, path.log_snr_dot)):
        np.testing.assert_allclose(derivative(t), jax.vmap(jax.grad(value))(t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", ALL_PATHS, ids=_ids)
def test_log_snr_definition_and_exact_inverse(path):
    t = jnp.asarray(INTERIOR)
    np.testing.assert_allclose(path.log_snr(t), jnp.log(path.alpha(t) ** 2 / path.sigma(t) ** 2), rtol=1e-12,
                               atol=1e-12)
    assert np.all(np.diff(path.log_snr(t)) < 0), "log-SNR must decrease in t"
    np.testing.assert_allclose(path.t_from_log_snr(path.log_snr(t)), t, rtol=1e-12, atol=1e-13)
    lam = jnp.linspace(float(path.log_snr(0.99)), float(path.log_snr(0.01)), 33)
    np.testing.assert_allclose(path.log_snr(path.t_from_log_snr(lam)), lam, rtol=1e-10, atol=1e-10)


def test_endpoints():
    lin, vp, cos, ve, edm = paths.linear(), paths.vp(), paths.vp_cosine(), paths.ve(), paths.edm()
    for p in (lin, vp, cos):
        assert float(p.alpha(0.0)) == 1.0 and float(p.sigma(0.0)) == 0.0
        assert float(p.log_snr(0.0)) == math.inf and float(p.t_from_log_snr(math.inf)) == 0.0
    assert float(lin.alpha(1.0)) == 0.0 and float(lin.sigma(1.0)) == 1.0
    assert float(cos.alpha(1.0)) == 0.0 and float(cos.sigma(1.0)) == pytest.approx(1.0, abs=1e-15)
    for p in (lin, cos):
        assert float(p.log_snr(1.0)) == -math.inf and float(p.t_from_log_snr(-math.inf)) == 1.0
    np.testing.assert_allclose(vp.alpha(1.0), math.exp(-(20.0 + 0.1) / 4), rtol=1e-14)
    for p in (ve, edm):
        np.testing.assert_allclose([p.sigma(0.0), p.sigma(1.0)], [0.002, 80.0], rtol=1e-12)
        assert float(p.alpha(0.3)) == 1.0 and float(p.alpha_dot(0.3)) == 0.0
    t = jnp.asarray(INTERIOR)
    for p in (vp, cos):  # variance preserving
        np.testing.assert_allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, 1.0, rtol=1e-14)


def test_vp_matches_song_et_al_formula():
    p, t = paths.vp(0.1, 20.0), jnp.asarray(INTERIOR)
    log_mean_coeff = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(p.alpha(t), jnp.exp(log_mean_coeff), rtol=1e-14)
    np.testing.assert_allclose(p.sigma(t), jnp.sqrt(1.0 - jnp.exp(2.0 * log_mean_coeff)), rtol=1e-12)


def test_vp_cosine_matches_nichol_dhariwal_formula():
    s, t = 0.008, jnp.asarray(INTERIOR)
    f = lambda u: jnp.cos((u + s) / (1 + s) * jnp.pi / 2) ** 2  # noqa: E731
    p = paths.vp_cosine(s)
    np.testing.assert_allclose(p.alpha(t) ** 2, f(t) / f(0.0), rtol=1e-12)


def test_ve_geometric_and_edm_karras_schedule():
    t = jnp.asarray(INTERIOR)
    np.testing.assert_allclose(paths.ve(0.01, 50.0).sigma(t), 0.01 * (50.0 / 0.01) ** t, rtol=1e-12)
    n, rho = 18, 7.0
    i = np.arange(n)
    karras = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho  # EDM eq. 5
    np.testing.assert_allclose(paths.edm().sigma(1.0 - i / (n - 1)), karras, rtol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS, ids=_ids)
def test_dtype_follows_t_and_hashable_static(path):
    t32 = jnp.asarray([0.2, 0.7], jnp.float32)
    for f in (path.alpha, path.sigma, path.alpha_dot, path.sigma_dot, path.log_snr, path.log_snr_dot):
        assert f(t32).dtype == jnp.float32 and f(t32).shape == (2,)
    assert path.t_from_log_snr(jnp.asarray([0.5], jnp.float32)).dtype == jnp.float32
    assert path.alpha(jnp.asarray(0.5)).dtype == jnp.float64
    assert hash(path) == hash(type(path)(**vars(path))) and path == type(path)(**vars(path))
    sigma = jax.jit(lambda p, t: p.sigma(t), static_argnums=0)(path, 0.5)
    np.testing.assert_allclose(sigma, path.sigma(0.5), rtol=1e-14)


def test_get_by_name():
    assert paths.NAMES == ("linear", "vp", "vp_cosine", "ve", "edm")
    for name in paths.NAMES:
        assert paths.get(name).name == name
    assert paths.get("vp", beta_max=10.0) == paths.vp(beta_max=10.0)
    with pytest.raises(ValueError, match="accepted: 'linear', 'vp', 'vp_cosine', 've', 'edm'"):
        paths.get("cosine")


@pytest.mark.parametrize("make, argument", [
    (lambda: paths.vp(beta_min=-0.1), "beta_min"),
    (lambda: paths.vp(beta_max=0.0), "beta_max"),
    (lambda: paths.vp(beta_min=5.0, beta_max=1.0), "beta_max"),
    (lambda: paths.vp_cosine(s=-0.1), "s"),
    (lambda: paths.ve(sigma_min=0.0), "sigma_min"),
    (lambda: paths.ve(sigma_min=10.0, sigma_max=1.0), "sigma_max"),
    (lambda: paths.edm(sigma_max=-1.0), "sigma_max"),
    (lambda: paths.edm(rho=0.0), "rho"),
])
def test_bad_constructor_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        make()


def test_non_numeric_argument_is_a_type_error():
    with pytest.raises(TypeError, match="sigma_min"):
        paths.ve(sigma_min="small")
