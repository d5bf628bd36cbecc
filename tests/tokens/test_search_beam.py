"""Step-level beam search: with a full beam, top-k expansion and the model's log-probability as the
PRM, it enumerates every completion and returns the exact argmax (and the exact top-N) found by brute
force over all V^L sequences -- also through an n-gram cache and with EOS; finished beams are kept
once, never copied; NFE equals the declared budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.models.markov import all_sequences

from ._exact import masked_law

jax.config.update("jax_enable_x64", True)

V, L = 3, 4
BEAMS = V ** (L - 1)                    # a full beam: every prefix of length < L is kept
RNG = np.random.default_rng(0)
MARKOV = its.models.MarkovLM(np.zeros(V), 1.5 * RNG.normal(size=(V, V)))
NGRAM = its.models.NGramLM(RNG.normal(size=(V, V)), 1.5 * RNG.normal(size=(V, V, V)))


def model_log_prob(generation):
    """PRM = log-probability of the partial completion under the model (from the rollout)."""
    return generation.log_probs.sum(-1)


def full_beam(model, prompt_len, **options):
    budget = prompt_len + BEAMS * V * L
    return budget, its.tokens.beam_search(model.logits_fn, model_log_prob, nfe_budget=budget, num_steps=L,
                                          step_length=1, expansions=V, expansion="top_k",
                                          init_cache=model.init_cache, **options)


def test_full_beam_finds_the_exact_argmax_and_top_beams_of_a_markov_lm():
    prompts = jnp.array([[1], [2]])
    budget, sampler = full_beam(MARKOV, 1)
    result = its.run(sampler, jax.random.key(0), prompts, num_steps=L, trace=1)
    out = result.output
    assert int(result.stats.nfe) == 2 * budget and float(result.stats.nfe_per_sample) == budget
    assert int(result.stats.verifier_calls) == 2 * BEAMS * V * L and int(result.stats.nonfinite) == 0
    split = out.split
    assert (int(split.width), int(split.num_groups), int(split.group_width)) == (BEAMS * V, BEAMS, V)
    assert (int(split.nfe_bound), int(split.nfe_budget), int(split.num_steps)) == (budget, budget, L)
    # the frontier grows as V^t: every prefix is expanded into all its V continuations
    np.testing.assert_array_equal(np.asarray(result.trace.info["num_live"]).T, [[3, 9, 27, 81]] * 2)
    sequences = np.asarray(all_sequences(V, L))
    for b, prompt in enumerate(np.asarray(prompts)):
        exact = np.asarray(MARKOV.completion_log_probs(jnp.asarray(prompt), L))
        np.testing.assert_array_equal(np.asarray(out.best.tokens[b, 1:]), sequences[np.argmax(exact)])
        np.testing.assert_allclose(float(out.best_score[b]), exact.max(), atol=1e-12)
        # the kept beams are exactly the top-N sequences, each once, with their exact log-probabilities
        live = np.asarray(out.scores[b]) > -np.inf
        assert live.sum() == BEAMS
        kept = np.asarray(out.candidates.tokens[b, :, 1:])[live]
        index = np.ravel_multi_index(kept.T, (V,) * L)
        assert np.unique(index).size == BEAMS
        np.testing.assert_array_equal(np.sort(index), np.sort(np.argsort(-exact)[:BEAMS]))
        np.testing.assert_allclose(np.asarray(out.scores[b])[live], exact[index], atol=1e-12)


def test_full_beam_with_eos_through_an_ngram_cache_matches_the_masked_law():
    eos = 2
    prompt = jnp.array([[0, 1]])
    budget, sampler = full_beam(NGRAM, 2, eos_id=eos)
    record = lambda s: (s.live, s.rank, s.base.seq.finished)  # noqa: E731
    result = its.run(sampler, jax.random.key(1), prompt, num_steps=L, trace=record)
    out = result.output
    law = masked_law(np.exp(np.asarray(NGRAM.completion_log_probs(prompt[0], L))), V, L, eos, 0)
    assert int(result.stats.nfe) <= budget and int(out.split.nfe_bound) == budget
    np.testing.assert_allclose(float(out.best_score[0]), np.log(law.max()), atol=1e-12)
    best = np.asarray(out.best.tokens[0, 2:])
    assert np.ravel_multi_index(best, (V,) * L) == np.argmax(law)
    # every distinct completion (after masking past EOS) is a kept candidate exactly once
    live = np.asarray(out.scores[0]) > -np.inf
    kept = np.ravel_multi_index(np.asarray(out.candidates.tokens[0, :, 2:])[live].T, (V,) * L)
    top = np.argsort(-law)[:min(BEAMS, np.count_nonzero(law))]
    assert np.unique(kept).size == kept.size
    np.testing.assert_array_equal(np.sort(kept), np.sort(top))
    np.testing.assert_allclose(np.exp(np.asarray(out.scores[0])[live]), law[kept], rtol=1e-10)
    # a finished beam holds one slot: no live finished row is a second copy (rank > 0)
    lives, ranks, finished = (np.asarray(a) for a in result.trace.state)     # (steps, 1, W) and (steps, W)
    lives, ranks = lives[:, 0], ranks[:, 0]
    assert np.any(lives & finished)
    assert not np.any(lives & finished & (ranks > 0))


def test_budget_below_one_beam_is_refused():
    with pytest.raises(ValueError, match="nfe_budget=12 is too small"):
        its.tokens.beam_search(MARKOV.logits_fn, model_log_prob, nfe_budget=12, num_steps=L, step_length=1,
                               expansions=V)
    _, sampler = full_beam(MARKOV, 1)
    with pytest.raises(ValueError, match="nfe_budget=.* too small.*prompt prefill costs 320"):
        its.run(sampler, jax.random.key(0), jnp.ones((1, 320), jnp.int32), num_steps=L)
    with pytest.raises(ValueError, match="num_steps=4"):
        its.run(sampler, jax.random.key(0), jnp.ones((1, 1), jnp.int32), num_steps=L - 1)
    with pytest.raises(ValueError, match="expansion"):
        its.tokens.beam_search(MARKOV.logits_fn, model_log_prob, nfe_budget=999, num_steps=L, step_length=1,
                               expansion="all")
