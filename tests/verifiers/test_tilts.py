"""Exact tilts: the tilted mixture and log Z against importance reweighting of many draws of the mixture,
the role of λ (d log Z / dλ = E_tilted[r]), and the reward contract (batched, order preserving, counted)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itscale.core import counting
from itscale.verifiers.tilts import linear_tilt, quadratic_tilt
from tests.models.test_gaussian_mixture import _monte_carlo_log_z, random_mixture

jax.config.update("jax_enable_x64", True)

D = 3


def _tilts(seed, scale):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(D, D))
    return {
        "quadratic": quadratic_tilt(rng.normal(size=D), 0.5 * b @ b.T / D, scale=scale),
        "linear": linear_tilt(0.4 * rng.normal(size=D), scale=scale),
    }


def _weighted_moments(x, log_w):
    """Self-normalised importance estimates of the mean and covariance entries, with delta-method
    standard errors sqrt(sum w_i^2 (f_i - f_hat)^2) / sum w_i."""
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ x
    centered = x - mean
    outer = (centered[:, :, None] * centered[:, None, :]).reshape(len(x), -1)
    cov = w @ outer
    se_mean = np.sqrt((w[:, None] ** 2 * (x - mean) ** 2).sum(0))
    se_cov = np.sqrt((w[:, None] ** 2 * (outer - cov) ** 2).sum(0))
    return mean, se_mean, cov.reshape(D, D), se_cov.reshape(D, D)


@pytest.mark.parametrize("kind", ["quadratic", "linear"])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_tilted_law_equals_importance_reweighting(kind, scale):
    gmm = random_mixture(seed=3, k=3, d=D, spread=1.0)
    tilt = _tilts(seed=4, scale=scale)[kind]
    x = gmm.sample(jax.random.key(5), 400_000)
    log_w = np.asarray(scale * tilt.reward_fn(x))
    x = np.asarray(x)
    tilted, log_z = tilt.tilted(gmm)

    mean, se_mean, cov, se_cov = _weighted_moments(x, log_w)
    assert np.all(np.abs(mean - np.asarray(tilted.mean())) < 4.5 * se_mean), (mean, tilted.mean(), se_mean)
    assert np.all(np.abs(cov - np.asarray(tilted.covariance())) < 4.5 * se_cov), (cov, tilted.covariance())
    estimate, se = _monte_carlo_log_z(log_w)
    assert abs(float(log_z) - estimate) < 4.0 * se, (float(log_z), estimate, se)
    # the reweighting moved the law: the test could tell a wrong tilt from the untilted mixture
    assert np.max(np.abs(np.asarray(gmm.mean()) - np.asarray(tilted.mean())) / se_mean) > 20


@pytest.mark.parametrize("kind", ["quadratic", "linear"])
def test_scale_is_the_tilt_exponent(kind):
    """log Z(λ) = log E_p[exp(λ r)]: zero at λ = 0 (and p itself), d log Z / dλ = E_{p_λ}[r] exactly,
    and a traced λ gives the same law as a Python one."""
    gmm = random_mixture(seed=6, k=3, d=D, spread=1.0)
    tilt = _tilts(seed=7, scale=1.5)[kind]

    untilted, log_z0 = tilt.tilted(gmm, 0.0)
    assert abs(float(log_z0)) < 1e-12
    np.testing.assert_allclose(untilted.weights, gmm.weights, rtol=1e-12)
    np.testing.assert_allclose(untilted.means, gmm.means, atol=1e-12)
    np.testing.assert_allclose(untilted.covs, gmm.covs, atol=1e-12)

    slope = jax.grad(lambda lam: tilt.tilted(gmm, lam)[1])(1.5)
    tilted, log_z = tilt.tilted(gmm)
    if kind == "quadratic":
        center, precision = tilt.reward_fn.args
        delta = tilted.means - center
        expected = -0.5 * tilted.weights @ (jnp.einsum("ij,kji->k", precision, tilted.covs)
                                            + jnp.einsum("ki,ij,kj->k", delta, precision, delta))
    else:
        (direction,) = tilt.reward_fn.args
        expected = tilted.mean() @ direction
    np.testing.assert_allclose(slope, expected, rtol=1e-9)

    traced_law, traced_log_z = jax.jit(lambda lam: tilt.tilted(gmm, lam))(1.5)
    np.testing.assert_allclose(traced_log_z, log_z, rtol=1e-12)
    np.testing.assert_allclose(traced_law.means, tilted.means, rtol=1e-12)


@pytest.mark.parametrize("kind", ["quadratic", "linear"])
def test_rewards_are_batched_order_preserving_and_counted(kind):
    tilt = _tilts(seed=8, scale=1.0)[kind]
    x = np.random.default_rng(9).normal(size=(11, D))
    rewards = tilt.reward_fn(x)
    assert rewards.shape == (11,)
    perm = np.random.default_rng(10).permutation(11)
    np.testing.assert_array_equal(tilt.reward_fn(x[perm]), rewards[perm])
    np.testing.assert_allclose([tilt.reward_fn(row[None])[0] for row in x], rewards, rtol=1e-12)
    assert tilt.reward_fn(x.astype(np.float32)).dtype == jnp.float32

    verifier = counting.counted(tilt.reward_fn, kind="verifier")

    @jax.jit
    def scored(x):
        with counting.ledger() as led:
            out = verifier(x), verifier(x[:4])
        return out, led.totals()

    (full, _), totals = scored(x)
    np.testing.assert_array_equal(full, rewards)
    assert int(totals["verifier"]) == 15 and int(totals["nfe"]) == 0


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="center"):
        quadratic_tilt(np.zeros((2, 2)), np.eye(2))
    with pytest.raises(ValueError, match="precision must have shape"):
        quadratic_tilt(np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        quadratic_tilt(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="semi-definite"):
        quadratic_tilt(np.zeros(2), -np.eye(2))
    with pytest.raises(ValueError, match="scale"):
        quadratic_tilt(np.zeros(2), np.eye(2), scale=-1.0)
    with pytest.raises(ValueError, match="scale"):
        linear_tilt(np.ones(2), scale=np.inf)
    with pytest.raises(TypeError, match="scale"):
        linear_tilt(np.ones(2), scale="big")
    tilt = linear_tilt(np.ones(2))
    with pytest.raises(ValueError, match=r"\(batch, d\) = \(batch, 2\)"):
        tilt.reward_fn(np.ones((4, 3)))
    with pytest.raises(ValueError, match="dimension"):
        tilt.tilted(random_mixture(seed=0, k=2, d=3))
    with pytest.raises(ValueError, match="scale"):
        quadratic_tilt(np.zeros(3), np.eye(3)).tilted(random_mixture(seed=0, k=2, d=3), -0.5)
