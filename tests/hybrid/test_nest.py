"""Nested loops: Jacobi decoding is refinement_outer over a greedy sequence pass (the same tokens as
its.tokens.jacobi and greedy rollout, exact NFE); blockwise masked diffusion is sequence_outer over
MDLM, which with one column per block and the exact Markov denoiser samples the chain's law (chi-square),
while one block of the whole canvas in one MDLM step does not (the product of marginals)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.hybrid.masked_diffusion import mdlm
from itscale.hybrid.nest import refinement_outer, sequence_outer, sequence_pass
from tests.tokens._exact import chi_square_pvalue

jax.config.update("jax_enable_x64", True)

V, P, N, BATCH = 5, 2, 6, 16
RNG = np.random.default_rng(0)
MODEL = its.models.MarkovLM(RNG.normal(size=V), 1.5 * RNG.normal(size=(V, V)))
PROMPTS = jnp.asarray(RNG.integers(0, V, size=(BATCH, P)))


def test_jacobi_is_refinement_outer_over_a_greedy_sequence_pass():
    sampler = refinement_outer(sequence_pass(MODEL.logits_fn, prompt_len=P))
    canvas = jnp.concatenate([PROMPTS, jnp.zeros((BATCH, N), PROMPTS.dtype)], axis=1)
    result = its.run(sampler, jax.random.key(0), canvas, num_steps=N + 1)
    jacobi = its.run(its.tokens.jacobi(MODEL.logits_fn, temperature=0.0), jax.random.key(0), PROMPTS,
                     num_steps=N).output
    greedy = its.run(its.tokens.rollout(MODEL.logits_fn, temperature=0.0), jax.random.key(0), PROMPTS,
                     num_steps=N).output
    np.testing.assert_array_equal(np.asarray(result.output.value), np.asarray(jacobi.tokens))
    np.testing.assert_array_equal(np.asarray(result.output.value), np.asarray(greedy.tokens))
    sweeps = int(result.output.sweeps)
    assert bool(result.output.converged) and sweeps <= N + 1
    assert int(result.stats.nfe) == sweeps * BATCH * (P + N)
    # fewer sweeps than tokens leave the tail unsolved: the first j new tokens are exact after j sweeps
    early = its.run(sampler, jax.random.key(0), canvas, num_steps=2).output.value
    np.testing.assert_array_equal(np.asarray(early[:, :P + 2]), np.asarray(greedy.tokens[:, :P + 2]))


L, NUM, MASK = 4, 20_000, 3
CHAIN = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.3, 0.2])),
                            jnp.log(jnp.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.05, 0.7]])))
EXACT = np.exp(np.asarray(CHAIN.completion_log_probs(jnp.zeros((0,), jnp.int32), L)))


def counts(tokens):
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < 3, "a position was left masked"
    return np.bincount(np.ravel_multi_index(tokens.T, (3,) * L), minlength=3 ** L)


@pytest.mark.parametrize("block, inner_steps, exact", [(1, 2, True), (L, 1, False)])
def test_blockwise_mdlm_is_sequence_outer_and_one_column_per_block_is_ar_sampling(block, inner_steps, exact):
    sampler = sequence_outer(lambda d: mdlm(d, mask_id=MASK), markov_denoiser(CHAIN, mask_id=MASK),
                             mask_id=MASK, block=block, inner_steps=inner_steps)
    blocks = -(-L // block)
    result = its.run(sampler, jax.random.key(1), jnp.full((NUM, L), MASK, jnp.int32), num_steps=blocks)
    assert int(result.stats.nfe) == NUM * blocks * inner_steps
    assert int(result.stats.nonfinite) == 0
    pvalue = chi_square_pvalue(counts(result.output.tokens), EXACT)
    assert (pvalue > 1e-3) if exact else (pvalue < 1e-6)
    if exact:   # log_probs are the exact conditionals: they sum to the chain's log-probability
        index = np.ravel_multi_index(np.asarray(result.output.tokens).T, (3,) * L)
        np.testing.assert_allclose(np.asarray(result.output.log_probs).sum(1), np.log(EXACT[index]), atol=1e-9)


def test_given_tokens_are_kept_and_errors():
    sampler = sequence_outer(lambda d: mdlm(d, mask_id=MASK), markov_denoiser(CHAIN, mask_id=MASK),
                             mask_id=MASK, block=3, inner_steps=1)
    x = jnp.asarray([[2, MASK, MASK, MASK, 1]] * 4)
    out = its.run(sampler, jax.random.key(0), x, num_steps=2).output
    np.testing.assert_array_equal(np.asarray(out.tokens[:, [0, 4]]), [[2, 1]] * 4)
    assert int(out.num_masked.sum()) == 0
    with pytest.raises(ValueError, match="num_steps=2"):
        its.run(sampler, jax.random.key(0), x, num_steps=3)
    with pytest.raises(ValueError, match="block"):
        sequence_outer(lambda d: mdlm(d, mask_id=MASK), markov_denoiser(CHAIN, mask_id=MASK), mask_id=MASK,
                       block=0, inner_steps=1)
    with pytest.raises(ValueError, match="inner_steps"):
        refinement_outer(sequence_pass(MODEL.logits_fn, prompt_len=P), inner_steps=0)
