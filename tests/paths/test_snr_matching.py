"""SNR matching between paths and the velocity change of path, checked on an exact Gaussian mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale.paths as paths
from itscale.models import GaussianMixture

jax.config.update("jax_enable_x64", True)

PAIRS = [(paths.linear(), paths.vp()), (paths.linear(), paths.vp_cosine()), (paths.vp(), paths.linear()),
         (paths.linear(), paths.edm()), (paths.ve(), paths.vp())]
S = jnp.linspace(0.05, 0.95, 19)


@pytest.mark.parametrize("path_from, path_to", PAIRS, ids=repr)
def test_matching_equalises_snr_and_scales_both_coefficients(path_from, path_to):
    m = paths.snr_matching(path_from, path_to)
    t_s, c = m.time(S), m.scale(S)
    np.testing.assert_allclose(path_from.log_snr(t_s), path_to.log_snr(S), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(c * path_from.alpha(t_s), path_to.alpha(S), rtol=1e-10)
    np.testing.assert_allclose(c * path_from.sigma(t_s), path_to.sigma(S), rtol=1e-10)


@pytest.mark.parametrize("path_from, path_to", PAIRS, ids=repr)
def test_matching_derivatives_equal_autodiff(path_from, path_to):
    m = paths.snr_matching(path_from, path_to)
    np.testing.assert_allclose(m.time_dot(S), jax.vmap(jax.grad(m.time))(S), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m.scale_dot(S), jax.vmap(jax.grad(m.scale))(S), rtol=1e-9, atol=1e-10)


def test_linear_source_closed_form():
    vp = paths.vp()
    np.testing.assert_allclose(paths.snr_matching(paths.linear(), vp).time(S),
                               vp.sigma(S) / (vp.alpha(S) + vp.sigma(S)), rtol=1e-12)


def _mixture(seed=0, k=3, d=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    return GaussianMixture(rng.dirichlet(np.ones(k)), 2.0 * rng.normal(size=(k, d)),
                           a @ a.transpose(0, 2, 1) / d + 0.1 * np.eye(d))


@pytest.mark.parametrize("path_from, path_to", PAIRS, ids=repr)
def test_change_path_gives_the_exact_velocity_of_the_new_path(path_from, path_to):
    gmm = _mixture()
    x = np.random.default_rng(1).normal(size=(6, 3)) * 1.5
    s = jnp.asarray([0.1, 0.3, 0.5, 0.7, 0.85, 0.95])
    converted = paths.change_path(gmm.velocity(path_from), path_from, path_to)
    np.testing.assert_allclose(converted(x, s), gmm.velocity(path_to)(x, s), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(converted(x, 0.4), gmm.velocity(path_to)(x, 0.4), rtol=1e-8, atol=1e-8)
