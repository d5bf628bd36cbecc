"""Conversions between velocity, x0, eps and score predictions: exact values and round trips, any path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import itscale.paths as paths
from itscale.paths import conversions as cv

jax.config.update("jax_enable_x64", True)

ALL_PATHS = [paths.linear(), paths.vp(), paths.vp_cosine(), paths.ve(), paths.edm()]
TIMES = st.floats(0.02, 0.98)


def _problem(path, seed, times, shape):
    """x0, eps, t (a (batch,) vector or scalar) and the exact x, u, score they imply."""
    rng = np.random.default_rng(seed)
    x0, eps = rng.normal(size=shape), rng.normal(size=shape)
    t = jnp.asarray(times) if len(times) > 1 else jnp.asarray(times[0])
    tb = t.reshape(t.shape + (1,) * (len(shape) - 1))
    x = path.alpha(tb) * x0 + path.sigma(tb) * eps
    u = path.alpha_dot(tb) * x0 + path.sigma_dot(tb) * eps
    return x0, eps, t, x, u, -eps / path.sigma(tb)


def _close(a, b):
    scale = 1.0 + np.max(np.abs(b))
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9 * scale)


@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), times=st.lists(TIMES, min_size=1, max_size=4), dim=st.integers(1, 3))
def test_conversions_recover_the_exact_quantities(path, seed, times, dim):
    batch = len(times)
    x0, eps, t, x, u, score = _problem(path, seed, times, (batch, 2, dim))
    truth = {"velocity": u, "x0": x0, "eps": eps, "score": score}
    for source in cv.PREDICTIONS:
        for target in cv.PREDICTIONS:
            _close(cv.convert(path, truth[source], x, t, source=source, target=target), truth[target])


@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), times=st.lists(TIMES, min_size=1, max_size=4))
def test_round_trips_through_velocity(path, seed, times):
    rng = np.random.default_rng(seed)
    _, _, t, x, _, _ = _problem(path, seed, times, (len(times), 3))
    u = rng.normal(size=x.shape) * (1.0 + np.abs(path.sigma_dot(t)).max())  # any velocity, not only exact
    _close(cv.velocity_from_x0(path, cv.x0_from_velocity(path, u, x, t), x, t), u)
    _close(cv.velocity_from_eps(path, cv.eps_from_velocity(path, u, x, t), x, t), u)
    _close(cv.velocity_from_score(path, cv.score_from_velocity(path, u, x, t), x, t), u)


def test_named_functions_match_documented_formulas():
    path, t = paths.vp(), 0.37
    a, s, ad, sd = path.alpha(t), path.sigma(t), path.alpha_dot(t), path.sigma_dot(t)
    x, u = jnp.asarray([[0.3, -1.2]]), jnp.asarray([[2.0, 0.5]])
    _close(cv.x0_from_velocity(path, u, x, t), (s * u - sd * x) / (ad * s - a * sd))
    _close(cv.score_from_velocity(path, u, x, t), (a * u - ad * x) / (s * (ad * s - a * sd)))
    _close(cv.x0_from_score(path, u, x, t), (x + s**2 * u) / a)


def test_adapters_wrap_model_functions():
    path = paths.linear()
    _, eps, t, x, u, score = _problem(path, 0, [0.3, 0.6], (2, 4))
    eps_model = lambda x_, t_: eps  # noqa: E731 -- a perfect eps-prediction model at these inputs
    _close(cv.as_velocity(eps_model, path, "eps")(x, t), u)
    _close(cv.as_score(eps_model, path, "eps")(x, t), score)
    _close(cv.as_x0(cv.as_velocity(eps_model, path, "eps"), path)(x, t), cv.x0_from_eps(path, eps, x, t))
    _close(cv.as_eps(lambda x_, t_: u, path)(x, t), eps)
    assert cv.as_velocity(eps_model, path, "velocity") is eps_model


def test_state_dtype_is_kept():
    x = jnp.ones((3, 2), jnp.float32)
    t = jnp.asarray([0.2, 0.5, 0.8])  # float64 times
    assert cv.x0_from_velocity(paths.vp(), x, x, t).dtype == jnp.float32


def test_bad_arguments():
    path = paths.linear()
    with pytest.raises(ValueError, match="prediction.*accepted: 'velocity', 'x0', 'eps', 'score'"):
        cv.as_velocity(lambda x, t: x, path, prediction="v")
    with pytest.raises(ValueError, match="target"):
        cv.convert(path, 1.0, 1.0, 0.5, source="x0", target="noise")
    with pytest.raises(ValueError, match=r"t must be a scalar or a vector of shape \(batch,\) = \(3,\)"):
        cv.x0_from_velocity(path, jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones(2) * 0.5)
