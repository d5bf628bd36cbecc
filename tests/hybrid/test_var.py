"""Next-scale prediction (``its.hybrid.var``) against the exact law of a multi-scale token tree.

Maps of sizes (1, 2, 4) over V = 2 tokens (128 canvases): with the tree's exact next-scale conditional,
VAR samples the tree's law (chi-square), also around a given coarse map; drawing a map whose tokens are
correlated given the coarser maps (a Markov chain read as maps (1, 2)) is not exact, and the error is the
factorisation's. NFE, partial runs, bad scales and the composition with best-of-N are checked too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.models.markov import all_sequences
from itscale.models.scale_tree import parent_index
from tests.tokens._exact import chi_square_pvalue

V, SCALES, N = 2, (1, 2, 4), 20000
L = sum(SCALES)
MASK = V
TREE = its.models.ScaleTree(jnp.log(jnp.array([0.3, 0.7])),
                            jnp.log(jnp.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.15, 0.85]]])), SCALES)
SEQUENCES = all_sequences(V, L)
EXACT = np.exp(np.asarray(TREE.log_prob(SEQUENCES), np.float64))
ALL_MASKED = jnp.full((N, L), MASK, jnp.int32)
VAR = its.hybrid.var(TREE.next_scale_denoiser(), mask_id=MASK, scales=SCALES)   # one sampler: one compilation


def counts(tokens, length=L) -> np.ndarray:
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < V, "a position was left masked"
    return np.bincount(np.ravel_multi_index(tokens.T, (V,) * length), minlength=V ** length)


def test_the_tree_is_a_normalised_law_with_the_stated_parents():
    np.testing.assert_allclose(EXACT.sum(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(parent_index(SCALES), [-1, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(parent_index((2, 3)), [-1, -1, 0, 0, 1])
    drawn = TREE.sample(jax.random.key(0), N)
    assert chi_square_pvalue(counts(drawn), EXACT) > 1e-3


def test_var_with_the_exact_next_scale_conditional_samples_the_exact_law():
    result = its.run(VAR, jax.random.key(1), ALL_MASKED, num_steps=len(SCALES))
    assert int(result.stats.nfe) == N * len(SCALES)
    assert chi_square_pvalue(counts(result.output.tokens), EXACT) > 1e-3
    np.testing.assert_allclose(result.output.log_probs.sum(1), TREE.log_prob(result.output.tokens), atol=1e-5)


def test_a_given_coarse_map_is_kept_and_the_rest_follows_the_conditional_law():
    x = ALL_MASKED.at[:, 0].set(1)
    tokens = its.run(VAR, jax.random.key(2), x, num_steps=len(SCALES)).output.tokens
    assert bool(jnp.all(tokens[:, 0] == 1))
    conditional = np.where(np.asarray(SEQUENCES[:, 0]) == 1, EXACT, 0.0)
    assert chi_square_pvalue(counts(tokens), conditional / conditional.sum()) > 1e-3


def test_fewer_steps_leave_the_finer_maps_masked_and_the_info_counts_the_draws():
    result = its.run(VAR, jax.random.key(3), ALL_MASKED[:5], num_steps=2, trace=1)
    np.testing.assert_array_equal(result.output.num_masked, [SCALES[2]] * 5)
    assert bool(jnp.all(result.output.tokens[:, 3:] == MASK)) and bool(jnp.all(result.output.tokens[:, :3] < V))
    np.testing.assert_array_equal(result.trace.info["drawn"][:, 0], SCALES[:2])


def test_drawing_a_correlated_map_in_parallel_is_the_factorised_law():
    """A Markov chain x0 -> x1 -> x2 read as maps (1, 2): x1 and x2 are dependent given x0, and VAR draws
    them from their exact marginals given x0 independently: it samples p(x0) p(x1|x0) p(x2|x0), not the
    chain."""
    chain = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([[0.9, 0.1], [0.1, 0.9]])))
    sampler = its.hybrid.var(markov_denoiser(chain, mask_id=MASK), mask_id=MASK, scales=(1, 2))
    tokens = its.run(sampler, jax.random.key(4), ALL_MASKED[:, :3], num_steps=2).output.tokens
    seqs = np.asarray(all_sequences(V, 3))
    exact = np.exp(np.asarray(chain.completion_log_probs(jnp.zeros((0,), jnp.int32), 3), np.float64))
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    factorised = 0.5 * p[seqs[:, 0], seqs[:, 1]] * (p @ p)[seqs[:, 0], seqs[:, 2]]
    assert chi_square_pvalue(counts(tokens, 3), factorised) > 1e-3
    assert chi_square_pvalue(counts(tokens, 3), exact) < 1e-6


def test_var_composes_with_best_of_n_on_the_exact_log_likelihood():
    search = its.search.best_of_n(VAR, lambda out: TREE.log_prob(out.tokens), num_candidates=8)
    best = its.run(search, jax.random.key(5), ALL_MASKED[:64], num_steps=len(SCALES)).output
    plain = its.run(VAR, jax.random.key(5), ALL_MASKED[:64], num_steps=len(SCALES)).output
    assert float(TREE.log_prob(best.best.tokens).mean()) > float(TREE.log_prob(plain.tokens).mean())


@pytest.mark.parametrize("scales, match", [((2, 2), "strictly increasing"), ((), "non-empty"), (4, "non-empty"),
                                           ((1, 0), r"scales\[1\]")])
def test_bad_scales_are_named(scales, match):
    with pytest.raises((ValueError, TypeError), match=match):
        its.hybrid.var(TREE.next_scale_denoiser(), mask_id=MASK, scales=scales)


def test_a_canvas_of_the_wrong_length_is_named_before_compute():
    with pytest.raises(ValueError, match="scales"):
        its.run(VAR, jax.random.key(0), ALL_MASKED[:2, :5], num_steps=3)
