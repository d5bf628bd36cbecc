"""Masked-diffusion samplers against the exact law of a Markov chain (V = 3, L = 4: 81 sequences).

The denoiser is perfect: ``markov_denoiser`` gives each masked position's exact conditional given the
unmasked tokens (forward–backward). A sampler that unmasks one position at a time, in an order that
does not look at the drawn tokens, then samples the chain's law exactly: the first-hitting sampler and
MaskGIT with L steps and a large choice temperature (random order) pass a chi-square test, also when
some positions are given (infilling). Unmasking several positions in one step draws them independently
(the factorised update): with one step MDLM draws the product of the marginals (chi-square against
it), and the total variation to the exact law shrinks as the number of steps grows.
"""

import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.hybrid.first_hitting import first_hitting
from itscale.hybrid.masked_diffusion import mdlm
from itscale.hybrid.maskgit import maskgit
from itscale.models.markov import all_sequences
from tests.tokens._exact import chi_square_pvalue

jax.config.update("jax_enable_x64", True)

V, L, N = 3, 4, 20000
MASK = V
CHAIN = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.3, 0.2])),
                            jnp.log(jnp.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.05, 0.7]])))
DENOISER = markov_denoiser(CHAIN, mask_id=MASK)
ALL_MASKED = jnp.full((N, L), MASK, jnp.int32)
SEQUENCES = np.asarray(all_sequences(V, L))
EXACT = np.exp(np.asarray(CHAIN.completion_log_probs(jnp.zeros((0,), jnp.int32), L)))
FIRST_HITTING = first_hitting(DENOISER, mask_id=MASK)
MASKGIT = maskgit(DENOISER, mask_id=MASK)
MDLM = mdlm(DENOISER, mask_id=MASK)
RANDOM_ORDER = {"temperature": 1e6}     # τ(1 − r) g dwarfs log p: the order ignores the drawn tokens


def counts(tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < V, "a position was left masked"
    return np.bincount(np.ravel_multi_index(tokens.T, (V,) * L), minlength=V ** L)


def total_variation(tokens, law) -> float:
    return 0.5 * float(np.abs(counts(tokens) / len(tokens) - law).sum())


def product_of_marginals() -> np.ndarray:
    marginals = np.stack([np.bincount(SEQUENCES[:, i], weights=EXACT, minlength=V) for i in range(L)])
    return np.prod(marginals[np.arange(L), SEQUENCES], axis=1)


_RUNS = {}


def run(sampler, num_steps, seed=0, params=None, x=None):
    """Output of a run from all-[MASK] rows (or ``x``), memoised across tests."""
    key = (id(sampler), num_steps, seed, params, None if x is None else np.asarray(x).tobytes())
    if key not in _RUNS:
        result = its.run(sampler, jax.random.key(seed), ALL_MASKED if x is None else x, num_steps=num_steps,
                         params=None if params is None else dict(params))
        assert int(result.stats.nonfinite) == 0
        assert int(result.stats.nfe) == N * num_steps                 # one denoiser call per row per step
        _RUNS[key] = result.output
    return _RUNS[key]


def test_the_denoiser_is_the_exact_conditional_given_the_unmasked_tokens():
    rng = np.random.default_rng(0)
    tokens = np.where(rng.random((16, L)) < 0.5, MASK, rng.integers(0, V, (16, L)))
    log_p = np.asarray(DENOISER(jnp.asarray(tokens), None))
    for row, conditional in zip(tokens, np.exp(log_p)):
        consistent = np.all((row == MASK) | (SEQUENCES == row), axis=1)
        law = EXACT * consistent / (EXACT * consistent).sum()
        expected = np.stack([np.bincount(SEQUENCES[:, i], weights=law, minlength=V) for i in range(L)])
        np.testing.assert_allclose(conditional, expected, atol=1e-12)


def test_first_hitting_samples_the_exact_law_one_token_per_step():
    out = run(FIRST_HITTING, L)
    assert (np.asarray(out.num_masked) == 0).all()
    assert chi_square_pvalue(counts(out.tokens), EXACT) > 1e-3


def test_maskgit_with_one_token_per_step_in_random_order_samples_the_exact_law():
    out = run(MASKGIT, L, params=tuple(RANDOM_ORDER.items()))
    assert chi_square_pvalue(counts(out.tokens), EXACT) > 1e-3
    # Confidence decoding (τ = 0) prefers likely tokens: the test sees the bias.
    confident = run(MASKGIT, L, params=(("temperature", 0.0),))
    assert chi_square_pvalue(counts(confident.tokens), EXACT) < 1e-6


def test_infilling_samples_the_exact_conditional_law_and_keeps_the_given_tokens():
    given = np.array([MASK, 2, MASK, 0])                              # x_1 = 2 and x_3 = 0 are given
    x = jnp.broadcast_to(jnp.asarray(given, jnp.int32), (N, L))
    consistent = np.all((given == MASK) | (SEQUENCES == given), axis=1)
    law = EXACT * consistent / (EXACT * consistent).sum()
    for sampler, params in ((FIRST_HITTING, None), (MASKGIT, tuple(RANDOM_ORDER.items()))):
        out = run(sampler, L, seed=1, params=params, x=x)     # 2 masked positions: the 2 last steps are no-ops
        np.testing.assert_array_equal(np.asarray(out.tokens)[:, [1, 3]], np.broadcast_to([2, 0], (N, 2)))
        np.testing.assert_array_equal(np.asarray(out.log_probs)[:, [1, 3]], 0.0)
        assert chi_square_pvalue(counts(out.tokens), law) > 1e-3


def test_one_step_draws_the_product_of_the_marginals():
    product = product_of_marginals()
    assert chi_square_pvalue(counts(run(MDLM, 1).tokens), product) > 1e-3


def test_total_variation_to_the_exact_law_shrinks_with_the_number_of_steps():
    floor = total_variation(run(FIRST_HITTING, L).tokens, EXACT)     # sampling noise of an exact sampler
    mdlm_tv = [total_variation(run(MDLM, k).tokens, EXACT) for k in (1, 4, 16)]
    maskgit_tv = [total_variation(run(MASKGIT, k, params=tuple(RANDOM_ORDER.items())).tokens, EXACT)
                  for k in (2, 4)]
    for tvs in (mdlm_tv, maskgit_tv):
        assert all(later < 0.8 * earlier for earlier, later in zip(tvs, tvs[1:])), tvs
    assert mdlm_tv[0] > 10 * floor and mdlm_tv[-1] < 4 * floor, (mdlm_tv, floor)
    assert maskgit_tv[-1] < 2 * floor, (maskgit_tv, floor)       # L steps: one token per step, exact
