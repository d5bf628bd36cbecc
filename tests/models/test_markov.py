"""MarkovLM / NGramLM: exact laws against brute force, the logits_fn contract, sampling, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import itscale as its
from itscale.models.markov import NGramCache, all_sequences

jax.config.update("jax_enable_x64", True)

V = 3


def random_markov(seed=0, vocab=V):
    rng = np.random.default_rng(seed)
    return its.models.MarkovLM(rng.normal(size=vocab), 1.5 * rng.normal(size=(vocab, vocab)))


def random_trigram(seed=1, vocab=V):
    rng = np.random.default_rng(seed)
    return its.models.NGramLM(rng.normal(size=(vocab, vocab)), 1.5 * rng.normal(size=(vocab,) * 3))


def brute_log_prob(model, seq):
    """log p(seq) written out from the tables."""
    seq = list(seq)
    n = model.order
    init = np.asarray(model.log_initial)
    table = np.asarray(model.log_table)
    head = seq[:n - 1]
    # marginal of the first len(head) tokens of the initial joint
    marginal = np.log(np.exp(init).sum(axis=tuple(range(len(head), n - 1)))) if len(head) < n - 1 else init
    total = marginal[tuple(head)]
    for t in range(n - 1, len(seq)):
        total += table[tuple(seq[t - n + 1:t + 1])]
    return total


def test_all_sequences_is_lexicographic():
    seqs = np.asarray(all_sequences(3, 4))
    assert seqs.shape == (81, 4)
    np.testing.assert_array_equal(np.ravel_multi_index(seqs.T, (3,) * 4), np.arange(81))
    assert all_sequences(5, 0).shape == (1, 0)
    with pytest.raises(ValueError, match="too many"):
        all_sequences(50, 8)


@pytest.mark.parametrize("make", [random_markov, random_trigram])
def test_sequence_log_prob_matches_brute_force(make):
    model = make()
    for length in (1, 2, 4):
        seqs = np.array(list(itertools.product(range(V), repeat=length)))
        got = np.asarray(model.sequence_log_prob(seqs))
        want = np.array([brute_log_prob(model, s) for s in seqs])
        np.testing.assert_allclose(got, want, atol=1e-12)
        np.testing.assert_allclose(np.exp(got).sum(), 1.0, atol=1e-12)


@pytest.mark.parametrize("make", [random_markov, random_trigram])
def test_completion_law_is_the_conditional(make):
    model = make()
    prompts = np.array([[2, 0], [1, 1]])
    law = np.asarray(model.completion_log_probs(prompts, 3))
    assert law.shape == (2, V ** 3)
    seqs = np.asarray(all_sequences(V, 3))
    for row, prompt in enumerate(prompts):
        full = [brute_log_prob(model, list(prompt) + list(s)) for s in seqs]
        np.testing.assert_allclose(law[row], np.array(full) - brute_log_prob(model, prompt), atol=1e-12)
    np.testing.assert_allclose(np.exp(law).sum(-1), 1.0, atol=1e-12)
    unconditional = np.asarray(model.completion_log_probs(np.zeros((0,), int), 3))
    np.testing.assert_allclose(unconditional, np.asarray(model.sequence_log_prob(seqs)), atol=1e-12)


def test_markov_marginals_recursion_equals_enumeration_and_matrix_powers():
    model = random_markov()
    prompt = np.array([0, 2])
    fast = np.asarray(model.marginals(prompt, 4))
    slow = np.asarray(its.models.NGramLM.marginals(model, prompt, 4))
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    transition = np.exp(np.asarray(model.log_transition))
    for i in range(4):
        np.testing.assert_allclose(fast[i], np.linalg.matrix_power(transition, i + 1)[2], atol=1e-12)
    np.testing.assert_allclose(np.asarray(model.marginals(np.zeros((0,), int), 1))[0],
                               np.exp(np.asarray(model.log_initial)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(model.marginals(np.array([[0, 2], [1, 1]]), 2))[0], fast[:2])


def test_markov_logits_fn_is_the_transition_row_and_keeps_the_cache():
    model = random_markov()
    tokens = jnp.array([[0, 2, 1], [1, 1, 0]])
    cache = {"anything": jnp.ones(2)}
    logits, out = model.logits_fn(tokens, cache)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(model.log_transition)[np.asarray(tokens)])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), out, cache))
    assert model.init_cache(2, 10) is None


def test_ngram_cached_feeding_with_left_padding_equals_full_forward():
    model = random_trigram()
    rows = [[2, 0, 1, 1, 2], [0, 1, 2]]
    start = jnp.array([0, 2])
    padded = jnp.array([rows[0], [0, 0] + rows[1]])
    cache = model.init_cache(2, 8, start=start)
    first, cache = model.logits_fn(padded[:, :3], cache)
    second, cache = model.logits_fn(padded[:, 3:], cache)
    assert isinstance(cache, NGramCache)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [5, 5])
    cached = np.concatenate([first, second], axis=1)
    for b, row in enumerate(rows):
        full = np.asarray(model.next_log_probs(jnp.array([row])))[0]
        np.testing.assert_allclose(cached[b, int(start[b]):], full, atol=1e-12)
    # rewinding a row and refeeding gives the same logits again
    rewound = cache._replace(lengths=cache.lengths - 1)
    again, _ = model.logits_fn(padded[:, 4:], rewound)
    np.testing.assert_allclose(np.asarray(again), cached[:, 4:], atol=1e-12)
    logits, none = model.logits_fn(jnp.array([rows[0]]), None)
    assert none is None
    np.testing.assert_allclose(np.asarray(logits)[0], cached[0], atol=1e-12)


@pytest.mark.parametrize("make", [random_markov, random_trigram])
def test_sample_matches_exact_law(make):
    model = make()
    samples = np.asarray(model.sample(jax.random.key(0), 30_000, 3))
    counts = np.bincount(np.ravel_multi_index(samples.T, (V,) * 3), minlength=V ** 3)
    probs = np.exp(np.asarray(model.completion_log_probs(np.zeros((0,), int), 3)))
    assert stats.chisquare(counts, counts.sum() * probs).pvalue > 1e-3
    wrong = np.roll(probs, 1)
    assert stats.chisquare(counts, counts.sum() * wrong).pvalue < 1e-3
    prompted = np.asarray(model.sample(jax.random.key(1), 30_000, 2, prompt=jnp.array([1, 0])))
    counts = np.bincount(np.ravel_multi_index(prompted.T, (V,) * 2), minlength=V ** 2)
    probs = np.exp(np.asarray(model.completion_log_probs(np.array([1, 0]), 2)))
    assert stats.chisquare(counts, counts.sum() * probs).pvalue > 1e-3


def test_models_are_pytrees_usable_under_jit():
    model = random_trigram()
    leaves, treedef = jax.tree.flatten(model)
    assert len(leaves) == 2
    rebuilt = jax.tree.unflatten(treedef, leaves)
    seqs = jnp.array([[0, 1, 2], [2, 2, 1]])
    got = jax.jit(lambda m, s: m.sequence_log_prob(s))(rebuilt, seqs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(model.sequence_log_prob(seqs)))
    scaled = jax.tree.map(lambda a: 2 * a, random_markov())
    assert isinstance(scaled, its.models.MarkovLM)


def test_inputs_are_normalised():
    model = its.models.MarkovLM(jnp.zeros(2), jnp.array([[0.0, jnp.log(3.0)], [5.0, 5.0]]))
    np.testing.assert_allclose(np.exp(np.asarray(model.log_transition)), [[0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(np.exp(np.asarray(model.log_initial)), [0.5, 0.5])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="log_transition"):
        its.models.MarkovLM(jnp.zeros(3), jnp.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="log_initial"):
        its.models.MarkovLM(jnp.zeros(2), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="log_table"):
        its.models.NGramLM(jnp.zeros((3,)), jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="floating"):
        its.models.MarkovLM(jnp.zeros(3), jnp.zeros((3, 3), int))
    with pytest.raises(ValueError, match="NaN"):
        its.models.MarkovLM(jnp.zeros(2), jnp.array([[0.0, jnp.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="all -inf"):
        its.models.MarkovLM(jnp.zeros(2), jnp.array([[-jnp.inf, -jnp.inf], [0.0, 0.0]]))
    model = random_trigram()
    with pytest.raises(ValueError, match="tokens"):
        model.logits_fn(jnp.zeros((3,), int), None)
    with pytest.raises(TypeError, match="NGramCache"):
        model.logits_fn(jnp.zeros((1, 2), int), {"lengths": 0})
    with pytest.raises(ValueError, match="rows"):
        model.logits_fn(jnp.zeros((1, 2), int), model.init_cache(2, 4))
    with pytest.raises(ValueError, match="prompt"):
        model.completion_log_probs(jnp.zeros((1, 1, 1), int), 2)
