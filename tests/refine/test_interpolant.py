"""Interpolant conversion: the exact linear-path mixture velocity, converted, is the exact VP velocity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its

jax.config.update("jax_enable_x64", True)

GMM = its.models.GaussianMixture(
    jnp.array([0.2, 0.5, 0.3]), jnp.array([[-1.0, 0.5, 0.0], [1.5, -0.5, 1.0], [0.0, 2.0, -1.0]]),
    jnp.array([[[0.3, 0.1, 0.0], [0.1, 0.2, 0.0], [0.0, 0.0, 0.5]],
               [[0.2, 0.0, 0.05], [0.0, 0.4, 0.0], [0.05, 0.0, 0.1]],
               [[0.6, -0.2, 0.0], [-0.2, 0.3, 0.1], [0.0, 0.1, 0.2]]]))
S = jnp.linspace(0.02, 0.98, 25)


def marginal_draws(path, per_time=64):
    """x_s = alpha(s) x0 + sigma(s) eps for each s in S (``per_time`` draws each), with the (batch,) times."""
    s = jnp.repeat(S, per_time)
    x0 = GMM.sample(jax.random.key(0), s.shape[0])
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    return path.alpha(s)[:, None] * x0 + path.sigma(s)[:, None] * eps, s


@pytest.mark.parametrize("target", [its.paths.vp(), its.paths.vp_cosine(), its.paths.ve(sigma_max=20.0)],
                         ids=["vp", "vp_cosine", "ve"])
def test_converted_linear_velocity_is_the_exact_target_velocity(target):
    source = its.paths.linear()
    converted = its.refine.convert_path(GMM.velocity(source), source, target)
    x, s = marginal_draws(target)
    np.testing.assert_allclose(converted(x, s), GMM.velocity(target)(x, s), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(converted(x[:64], S[0]), GMM.velocity(target)(x[:64], S[0]), rtol=1e-8,
                               atol=1e-8)


def test_per_sample_times_and_a_round_trip():
    """A (batch,) vector of times works, and converting to VP and back to linear is the identity."""
    linear, vp = its.paths.linear(), its.paths.vp()
    x, s = marginal_draws(linear, per_time=8)
    to_vp = its.refine.convert_path(GMM.velocity(linear), linear, vp)
    one_by_one = jax.jit(jax.vmap(lambda xi, si: to_vp(xi[None], si)[0]))
    np.testing.assert_allclose(to_vp(x, s), one_by_one(x, s), rtol=1e-12, atol=1e-12)
    back = its.refine.convert_path(to_vp, vp, linear)
    np.testing.assert_allclose(back(x, s), GMM.velocity(linear)(x, s), rtol=1e-8, atol=1e-8)


def test_converted_model_is_counted_once_and_samples_on_the_target_path():
    linear, vp = its.paths.linear(), its.paths.vp()
    model = its.counted(GMM.velocity(linear))
    converted = its.refine.convert_path(model, linear, vp)
    x1 = jax.random.normal(jax.random.key(2), (8, 3))
    result = its.run(its.refine.sde(converted, vp, g="sigma"), jax.random.key(3), x1, num_steps=10)
    assert int(result.stats.nfe) == 8 * 10
    ode = its.run(its.refine.ode(converted, "euler"), jax.random.key(3), x1, num_steps=10)
    assert int(ode.stats.nfe) == 8 * 10


def test_bad_arguments():
    linear = its.paths.linear()
    with pytest.raises(TypeError, match="target_path"):
        its.refine.convert_path(GMM.velocity(linear), linear, "vp")
    with pytest.raises(TypeError, match="velocity_fn"):
        its.refine.convert_path(None, linear, its.paths.vp())
