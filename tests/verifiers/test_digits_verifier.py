"""Digit rewards: log p(y = c | x) equals log_softmax of the logits, row by row and order preserving,
counted as verifier calls, with the classifier's weights and the target traced; the raw logit is
unbounded (hackable) where the log-probability is not; features and distances against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import itscale as its
from itscale.core import counting
from itscale.models.digits import Classifier, load_digits
from itscale.models.mlp import MLP
from itscale.verifiers import digits as rewards


@pytest.fixture(scope="module")
def setup():
    data = load_digits()
    return Classifier(width=24, depth=2, rngs=nnx.Rngs(3)), jnp.asarray(data.test_x[:40]), data


@pytest.mark.parametrize("target", [0, 7])
def test_class_log_prob_is_log_softmax_of_the_logits_row_by_row(setup, target):
    classifier, x, _ = setup
    reward = rewards.class_log_prob(classifier, target)
    values = reward(x)
    assert values.shape == (40,)
    np.testing.assert_allclose(values, jax.nn.log_softmax(classifier(x), axis=-1)[:, target], rtol=1e-6)
    assert np.all(np.asarray(values) <= 0.0)
    perm = np.random.default_rng(0).permutation(40)
    np.testing.assert_allclose(reward(x[perm]), np.asarray(values)[perm], rtol=1e-6)
    np.testing.assert_allclose(reward(x[5:6]), values[5:6], rtol=1e-5)
    np.testing.assert_allclose(rewards.class_logit(classifier, target)(x), classifier(x)[:, target],
                               rtol=1e-6)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(
        jnp.stack([rewards.class_log_prob(classifier, c)(x) for c in range(10)]), axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(rewards.max_class_log_prob(classifier)(x), jnp.max(jnp.stack(
        [rewards.class_log_prob(classifier, c)(x) for c in range(10)]), axis=0), rtol=1e-6)


def test_calls_are_counted_as_verifier_calls(setup):
    classifier, x, data = setup
    reward = rewards.class_log_prob(classifier, 2)
    distance = rewards.feature_distance(classifier, data.test_x[data.test_y == 2])

    @jax.jit
    def scored(reward, distance, x):
        with counting.ledger() as led:
            reward(x), distance(x[:3]), rewards.features(classifier)(x[:5])
            rewards.max_class_log_prob(classifier)(x[:7])
        return led.totals()

    totals = scored(reward, distance, x)
    assert int(totals["verifier"]) == 40 + 3 + 5 + 7 and int(totals["nfe"]) == 0


def test_target_and_weights_are_traced_not_constants(setup):
    classifier, x, _ = setup
    apply = jax.jit(lambda reward, x: reward(x))
    apply(rewards.class_log_prob(classifier, 1), x)
    other = apply(rewards.class_log_prob(classifier, 4), x)              # another class: same compilation
    assert apply._cache_size() == 1
    np.testing.assert_allclose(other, jax.nn.log_softmax(classifier(x))[:, 4], rtol=1e-6)
    shifted = Classifier(width=24, depth=2, rngs=nnx.Rngs(4))           # other weights: same compilation
    apply(rewards.class_log_prob(shifted, 4), x)
    assert apply._cache_size() == 1
    with pytest.raises(ValueError, match="target"):
        rewards.class_log_prob(classifier, 10)
    with pytest.raises(ValueError, match="target"):
        rewards.class_logit(classifier, 1.5)
    with pytest.raises(TypeError, match="Classifier"):
        rewards.class_log_prob(lambda x: x, 1)
    with pytest.raises(ValueError, match="references"):
        rewards.feature_distance(classifier, np.zeros((3, 10)))


def test_best_of_n_picks_the_highest_class_log_prob(setup):
    """The reward as a search's verifier: a module with traced weights, one verifier call per candidate."""
    classifier, _, _ = setup
    flow = MLP(64, width=16, depth=1, rngs=nnx.Rngs(0))
    reward = rewards.class_log_prob(classifier, 3)
    search = its.search.best_of_n(its.refine.ode(flow, solver="euler"), reward, num_candidates=4)
    result = its.run(search, jax.random.key(0), jax.random.normal(jax.random.key(1), (2, 64)), num_steps=3)
    out = result.output
    assert int(result.stats.verifier_calls) == 8
    np.testing.assert_allclose(out.scores, reward(out.candidates.reshape(8, 64)).reshape(2, 4), rtol=1e-5)
    np.testing.assert_array_equal(out.best_index, np.argmax(out.scores, axis=1))


def test_the_logit_is_hackable_and_the_log_prob_is_not(setup):
    """Far from the data a silu network is about positively homogeneous, f(s v) ~ s a(v): along a
    direction that raises the target logit it grows without bound, while log p(y = c | x) <= 0."""
    classifier, _, _ = setup
    target = 5
    directions = jax.random.normal(jax.random.key(0), (64, 64))
    logit, log_prob = rewards.class_logit(classifier, target), rewards.class_log_prob(classifier, target)
    v = directions[jnp.argmax(logit(100.0 * directions))][None]
    far = jnp.concatenate([s * v for s in (100.0, 1000.0, 10000.0)])
    values = np.asarray(logit(far))
    assert values[0] > 0 and values[1] > 5 * values[0] and values[2] > 5 * values[1]
    assert np.all(np.asarray(log_prob(far)) <= 0.0)
    assert np.abs(np.asarray(far)).max() > 1.0                         # off the pixel range [-1, 1]


def test_features_and_feature_distance_against_brute_force(setup):
    classifier, x, data = setup
    phi = rewards.features(classifier)(x)
    np.testing.assert_allclose(phi, classifier.features(x), rtol=1e-6)
    assert phi.shape == (40, 24)
    references = data.test_x[data.test_y == 7]
    ref_phi = np.asarray(classifier.features(jnp.asarray(references)), dtype=np.float64)
    brute = np.sqrt(((np.asarray(phi, np.float64)[:, None] - ref_phi[None]) ** 2).sum(-1)).min(1)
    distance = rewards.feature_distance(classifier, references)
    # float32 squared distances are exact to ~1e-7 relative; their square root near 0 to ~1e-3
    np.testing.assert_allclose(distance(x), brute, rtol=1e-4, atol=1e-3)
    assert np.sum(brute == 0.0) >= 2 and np.all(brute[brute > 0] > 0.1)   # x holds some references
    np.testing.assert_allclose(distance(jnp.asarray(references[:3])), 0.0, atol=2e-3)
    perm = np.random.default_rng(1).permutation(40)
    np.testing.assert_allclose(distance(x[perm]), brute[perm], rtol=1e-4, atol=1e-3)
