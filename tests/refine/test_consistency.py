"""Multistep consistency sampling: with the exact flow map of a Gaussian every step count samples the
exact law; with the posterior mean (a denoiser, not a consistency function) more steps move the law
toward the truth; NFE = rows x steps; it composes with best-of-N and takes NNX modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

import itscale as its

MU, S = jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])
PATH = its.paths.linear()
N = 20000


def flow_map(x, t):
    """The probability-flow map of N(MU, diag S²) from time t to 0 on the linear path."""
    t = t[:, None]
    return MU + S / jnp.sqrt((1 - t) ** 2 * S**2 + t**2) * (x - (1 - t) * MU)


def posterior_mean(x, t):
    t = t[:, None]
    return MU + (1 - t) * S**2 / ((1 - t) ** 2 * S**2 + t**2) * (x - (1 - t) * MU)


NOISE = jax.random.normal(jax.random.key(0), (N, 2))


@pytest.mark.parametrize("steps", [1, 3])
def test_exact_consistency_function_samples_the_exact_law(steps):
    result = its.run(its.refine.consistency(flow_map, PATH), jax.random.key(1), NOISE, num_steps=steps)
    assert int(result.stats.nfe) == N * steps
    z = (np.asarray(result.output) - np.asarray(MU)) / np.asarray(S)
    for i in range(2):
        assert stats.kstest(z[:, i], "norm").pvalue > 1e-3


def test_more_steps_correct_an_approximate_consistency_function():
    sampler = its.refine.consistency(posterior_mean, PATH)
    errors = []
    for steps in (1, 2, 4, 16):
        out = np.asarray(its.run(sampler, jax.random.key(1), NOISE, num_steps=steps).output)
        errors.append(float(np.abs(out.std(axis=0) - np.asarray(S)).sum()))
    assert errors[0] == pytest.approx(float(S.sum()), rel=1e-5)        # one step: every sample at the mean
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_composes_with_best_of_n_and_takes_an_nnx_module():
    reward = lambda x: -jnp.sum((x - MU) ** 2, axis=-1)       # noqa: E731
    search = its.search.best_of_n(its.refine.consistency(flow_map, PATH), reward, num_candidates=4)
    result = its.run(search, jax.random.key(2), NOISE[:64], num_steps=2)
    assert int(result.stats.nfe) == 64 * 4 * 2
    assert float(jnp.mean(reward(result.output.best))) > float(jnp.mean(reward(result.output.candidates[:, 0])))
    module = its.models.MLP(2, width=16, rngs=nnx.Rngs(0))
    out = its.run(its.refine.consistency(module, PATH), jax.random.key(3), NOISE[:8], num_steps=2).output
    assert out.shape == (8, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_model_output_is_named():
    with pytest.raises(ValueError, match="consistency_fn must return x0"):
        its.run(its.refine.consistency(lambda x, t: x[:, :1], PATH), jax.random.key(0), NOISE[:4], num_steps=1)
    with pytest.raises(TypeError, match="path"):
        its.refine.consistency(flow_map, "linear")
