"""speculative: the output follows the target's exact law with a different draft (chi-square), the
measured tokens per target call match (1 - a^(gamma+1)) / (1 - a), exact NFE, greedy, EOS with a cached
n-gram target and per-row prompts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its

from ._exact import chi_square_pvalue, completion_counts, masked_law, truncated_chain

jax.config.update("jax_enable_x64", True)

V, N, NUM, GAMMA = 4, 3, 20_000, 2
PROMPT = np.array([1, 2])
PROMPTS = jnp.asarray(np.tile(PROMPT, (NUM, 1)))
TARGET = its.models.MarkovLM(np.zeros(V), np.log([[0.50, 0.25, 0.15, 0.10],
                                                  [0.10, 0.45, 0.30, 0.15],
                                                  [0.30, 0.10, 0.35, 0.25],
                                                  [0.20, 0.30, 0.20, 0.30]]))
DRAFT = its.models.MarkovLM(np.zeros(V), np.log([[0.10, 0.20, 0.30, 0.40],
                                                 [0.40, 0.10, 0.10, 0.40],
                                                 [0.25, 0.25, 0.25, 0.25],
                                                 [0.60, 0.10, 0.10, 0.20]]))


def exact_law(model, prompt=PROMPT, length=N):
    return np.exp(np.asarray(model.completion_log_probs(jnp.asarray(prompt), length)))


def test_output_follows_the_target_law_with_a_different_draft():
    sampler = its.tokens.speculative(TARGET.logits_fn, DRAFT.logits_fn, gamma=GAMMA, max_new_tokens=N)
    for i, temperature in enumerate((1.0, 0.7)):
        params = {"temperature": temperature}
        result = its.run(sampler, jax.random.key(i), PROMPTS, num_steps=N, params=params)
        out = result.output
        counts = completion_counts(np.asarray(out.tokens), 2, N, V)
        target = truncated_chain(TARGET, temperature=temperature)
        assert chi_square_pvalue(counts, exact_law(target)) > 1e-3
        assert chi_square_pvalue(counts, exact_law(truncated_chain(DRAFT, temperature=temperature))) < 1e-3
        # log_probs are the target model's, sample_log_probs the target's sampling law
        index = np.ravel_multi_index(np.asarray(out.tokens[:, 2:]).T, (V,) * N)
        np.testing.assert_allclose(np.asarray(out.log_probs).sum(1), np.log(exact_law(TARGET))[index],
                                   atol=1e-9)
        np.testing.assert_allclose(np.asarray(out.sample_log_probs).sum(1), np.log(exact_law(target))[index],
                                   atol=1e-9)
        np.testing.assert_array_equal(np.asarray(out.lengths), 2 + N)
        rounds = int(np.asarray(out.target_calls).max())
        assert int(result.stats.nfe) == 2 * NUM * (2 - 1) + rounds * 2 * NUM * (GAMMA + 1)
        assert 0.2 < float(out.acceptance_rate) < 0.9 and 1.0 < float(out.tokens_per_call) < GAMMA + 1
    greedy = its.run(sampler, jax.random.key(5), PROMPTS, num_steps=N, params={"temperature": 0.0}).output
    np.testing.assert_array_equal(np.asarray(greedy.tokens[:, 2:]), 2)          # target's argmax chain from 2


def test_tokens_per_call_matches_the_geometric_formula():
    # rows are rotations of p0 and q0, so every context accepts with the same probability sum(min(p0, q0))
    p0, q0 = np.array([0.5, 0.3, 0.15, 0.05]), np.full(V, 0.25)
    rotate = lambda row: np.log(np.stack([np.roll(row, x) for x in range(V)]))  # noqa: E731
    target, draft = its.models.MarkovLM(np.zeros(V), rotate(p0)), its.models.MarkovLM(np.zeros(V), rotate(q0))
    gamma, length, batch = 3, 40, 2_000
    sampler = its.tokens.speculative(target.logits_fn, draft.logits_fn, gamma=gamma, max_new_tokens=length)
    out = its.run(sampler, jax.random.key(1), jnp.zeros((batch, 1), int), num_steps=length).output
    a = float(out.acceptance_rate)
    assert abs(a - np.minimum(p0, q0).sum()) < 0.01
    formula = (1 - a ** (gamma + 1)) / (1 - a)
    assert abs(float(out.tokens_per_call) - formula) < 0.03
    assert abs(float(out.tokens_per_call) - 1 / (1 - a)) > 0.2          # the untruncated series is off
    np.testing.assert_array_equal(np.asarray(out.lengths), 1 + length)


def test_eos_cached_ngram_target_per_row_prompts_and_a_perfect_draft():
    rng = np.random.default_rng(2)
    trigram = its.models.NGramLM(rng.normal(size=(V, V)), 1.2 * rng.normal(size=(V, V, V)))
    eos, half = 3, NUM // 2
    prompts = jnp.asarray([[1, 2, 0]] * half + [[2, 0, 0]] * half)
    lengths = jnp.asarray([3] * half + [1] * half)
    sampler = its.tokens.speculative(trigram.logits_fn, DRAFT.logits_fn, gamma=GAMMA, eos_id=eos,
                                     max_new_tokens=N, target_init_cache=trigram.init_cache)
    out = its.run(sampler, jax.random.key(3), (prompts, lengths), num_steps=N).output
    tokens = np.asarray(out.tokens)
    for rows, prompt in ((slice(0, half), [1, 2, 0]), (slice(half, None), [2])):
        law = masked_law(exact_law(trigram, prompt), V, N, eos, 0)
        assert chi_square_pvalue(completion_counts(tokens[rows], len(prompt), N, V), law) > 1e-3
    finished = np.asarray(out.finished)
    assert 0.1 < finished.mean() < 0.9
    assert (np.asarray(out.lengths)[~finished] == np.asarray(lengths)[~finished] + N).all()
    # a draft equal to the target is always accepted: gamma + 1 tokens per target call
    same = its.tokens.speculative(TARGET.logits_fn, TARGET.logits_fn, gamma=GAMMA, max_new_tokens=6)
    perfect = its.run(same, jax.random.key(4), PROMPTS[:16], num_steps=6).output
    assert float(perfect.acceptance_rate) == 1.0
    np.testing.assert_array_equal(np.asarray(perfect.target_calls), 2)
    assert float(perfect.tokens_per_call) == GAMMA + 1


def test_bad_input_raises():
    five = its.models.MarkovLM(np.zeros(5), np.zeros((5, 5)))
    sampler = its.tokens.speculative(TARGET.logits_fn, five.logits_fn, gamma=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="same vocabulary"):
        its.run(sampler, jax.random.key(0), PROMPTS[:2], num_steps=2)
    with pytest.raises(ValueError, match="gamma"):
        its.tokens.speculative(TARGET.logits_fn, DRAFT.logits_fn, gamma=0, max_new_tokens=2)
    with pytest.raises(TypeError, match="draft_logits_fn"):
        its.tokens.speculative(TARGET.logits_fn, "draft", gamma=1, max_new_tokens=2)
