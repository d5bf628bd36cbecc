"""rollout: samples follow the exact completion law of a MarkovLM / NGramLM (chi-square), decoding
controls give exactly the truncated laws, EOS masking, log-probabilities, NFE, no retrace, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from ._exact import chi_square_pvalue, completion_counts, masked_law, truncated_chain

jax.config.update("jax_enable_x64", True)

V, N, NUM = 4, 3, 20_000
PROMPT = np.array([1, 2])
PROMPTS = jnp.asarray(np.tile(PROMPT, (NUM, 1)))
MODEL = its.models.MarkovLM(np.log([0.1, 0.2, 0.3, 0.4]),
                            np.log([[0.50, 0.25, 0.15, 0.10],
                                    [0.10, 0.45, 0.30, 0.15],
                                    [0.30, 0.10, 0.35, 0.25],
                                    [0.20, 0.30, 0.20, 0.30]]))


BASIC = its.tokens.rollout(MODEL.logits_fn, max_new_tokens=N)


def exact_law(model, prompt=PROMPT, length=N):
    return np.exp(np.asarray(model.completion_log_probs(jnp.asarray(prompt), length)))


def counts_of(result, prompt_len=2):
    return completion_counts(np.asarray(result.output.tokens), prompt_len, N, V)


def test_samples_follow_the_exact_law_and_a_wrong_law_is_rejected():
    result = its.run(BASIC, jax.random.key(0), PROMPTS, num_steps=N)
    counts = counts_of(result)
    assert chi_square_pvalue(counts, exact_law(MODEL)) > 1e-3
    assert chi_square_pvalue(counts, exact_law(truncated_chain(MODEL, temperature=1.15))) < 1e-3
    assert chi_square_pvalue(counts, exact_law(MODEL, prompt=[1, 1])) < 1e-3
    out = result.output
    assert out.tokens.shape == (NUM, 2 + N) and out.log_probs.shape == (NUM, N)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, :2]), np.asarray(PROMPTS))
    # log_probs are the exact conditional log-probabilities of the sampled completion
    index = np.ravel_multi_index(np.asarray(out.tokens[:, 2:]).T, (V,) * N)
    exact = np.asarray(MODEL.completion_log_probs(jnp.asarray(PROMPT), N))[index]
    np.testing.assert_allclose(np.asarray(out.log_probs).sum(1), exact, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out.sample_log_probs), np.asarray(out.log_probs))
    full = np.asarray(MODEL.sequence_log_prob(out.tokens[:5]) - MODEL.sequence_log_prob(PROMPTS[:5]))
    np.testing.assert_allclose(np.asarray(out.log_probs[:5]).sum(1), full, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out.lengths), 2 + N)
    assert not np.asarray(out.finished).any()
    assert int(result.stats.nfe) == NUM * (2 + N) and int(result.stats.nonfinite) == 0


def test_fewer_steps_leave_padding_and_rows_do_not_depend_on_the_batch():
    full = its.run(BASIC, jax.random.key(0), PROMPTS, num_steps=N)
    short = its.run(BASIC, jax.random.key(0), PROMPTS[:7], num_steps=N - 1)
    assert int(short.stats.nfe) == 7 * (2 + N - 1)
    np.testing.assert_array_equal(np.asarray(short.output.tokens[:, :2 + N - 1]),
                                  np.asarray(full.output.tokens[:7, :2 + N - 1]))
    np.testing.assert_array_equal(np.asarray(short.output.tokens[:, 2 + N - 1:]), 0)
    np.testing.assert_array_equal(np.asarray(short.output.lengths), 2 + N - 1)


CONTROLS = [
    {"temperature": 0.6},
    {"top_p": 0.6},
    {"min_p": 0.45},
    {"temperature": 1.5, "top_p": 0.8, "min_p": 0.1},
]


def test_temperature_top_p_min_p_give_exactly_the_truncated_laws_without_retracing():
    traced = chex.assert_max_traces(MODEL.logits_fn, n=2)            # prefill + scan body, once
    sampler = its.tokens.rollout(traced, max_new_tokens=N, top_p=1.0, min_p=0.0)
    for i, controls in enumerate(CONTROLS):
        params = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, **controls}
        result = its.run(sampler, jax.random.key(i), PROMPTS, num_steps=N, params=params)
        out = result.output
        assert int(result.stats.nfe) == NUM * (2 + N)
        chain = truncated_chain(MODEL, **controls)
        assert chi_square_pvalue(counts_of_tokens(out), exact_law(chain)) > 1e-3, controls
        # sample_log_probs are the exact truncated log-probabilities, log_probs the model's
        index = np.ravel_multi_index(np.asarray(out.tokens[:, 2:]).T, (V,) * N)
        for got, model in ((out.sample_log_probs, chain), (out.log_probs, MODEL)):
            exact = np.asarray(model.completion_log_probs(jnp.asarray(PROMPT), N))[index]
            np.testing.assert_allclose(np.asarray(got).sum(1), exact, atol=1e-9)
    greedy = its.run(sampler, jax.random.key(9), PROMPTS, num_steps=N,
                     params={"temperature": 0.0, "top_p": 1.0, "min_p": 0.0}).output
    np.testing.assert_array_equal(np.asarray(greedy.tokens[:, 2:]), 2)      # the argmax chain from token 2
    np.testing.assert_array_equal(np.asarray(greedy.sample_log_probs), 0.0)


def counts_of_tokens(out):
    return completion_counts(np.asarray(out.tokens), 2, N, V)


def test_top_k_and_eos_give_the_exact_masked_truncated_law():
    eos, pad = 3, 0
    out = its.run(its.tokens.rollout(MODEL.logits_fn, max_new_tokens=N, top_k=3, temperature=0.8, eos_id=eos,
                                     pad_id=pad), jax.random.key(4), PROMPTS, num_steps=N).output
    law = masked_law(exact_law(truncated_chain(MODEL, temperature=0.8, top_k=3)), V, N, eos, pad)
    counts = counts_of_tokens(out)
    assert chi_square_pvalue(counts, law) > 1e-3
    untruncated = masked_law(exact_law(truncated_chain(MODEL, temperature=0.8)), V, N, eos, pad)
    assert chi_square_pvalue(counts, untruncated) < 1e-3
    completions = np.asarray(out.tokens[:, 2:])
    has_eos = (completions == eos).any(1)
    assert 0.2 < has_eos.mean() < 0.8
    first = np.where(has_eos, np.argmax(completions == eos, 1), N - 1)
    np.testing.assert_array_equal(np.asarray(out.finished), has_eos)
    np.testing.assert_array_equal(np.asarray(out.lengths), 2 + first + 1)
    after = np.arange(N) > first[:, None]
    assert (completions[after] == pad).all() and (np.asarray(out.log_probs)[after] == 0).all()
    # the sampling log-probabilities of a row are those of its prefix up to and including EOS
    index = np.ravel_multi_index(completions.T, (V,) * N)
    np.testing.assert_allclose(np.exp(np.asarray(out.sample_log_probs).sum(1)), law[index], rtol=1e-9)


def test_per_row_prompt_lengths_condition_on_each_prompt_with_step_noise():
    rng = np.random.default_rng(5)
    trigram = its.models.NGramLM(rng.normal(size=(V, V)), 1.2 * rng.normal(size=(V, V, V)))
    long, short = [1, 2, 0], [2]
    half = NUM // 2
    prompts = jnp.asarray([long] * half + [short + [3, 3]] * half)      # right-padded with junk
    lengths = jnp.asarray([3] * half + [1] * half)
    out = its.run(its.tokens.rollout(trigram.logits_fn, max_new_tokens=N, init_cache=trigram.init_cache,
                                     noise="step"), jax.random.key(6), (prompts, lengths), num_steps=N).output
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(np.asarray(out.prompt_lengths), np.asarray(lengths))
    np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(lengths) + N)
    np.testing.assert_array_equal(tokens[:half, :3], [long] * half)
    np.testing.assert_array_equal(tokens[half:, 0], short[0])
    assert (tokens[half:, 1 + N:] == 0).all()                            # right padding after the completion
    for rows, prompt, offset in ((slice(0, half), long, 3), (slice(half, None), short, 1)):
        counts = completion_counts(tokens[rows], offset, N, V)
        assert chi_square_pvalue(counts, exact_law(trigram, prompt)) > 1e-3
    assert chi_square_pvalue(completion_counts(tokens[half:], 1, N, V), exact_law(trigram, [2, 3, 3])) < 1e-3


def test_impossible_rows_give_pad_and_minus_inf_never_nan():
    def dead_end(tokens, cache):        # after token 2 nothing is possible
        logits = MODEL.log_transition[tokens]
        return jnp.where((tokens == 2)[..., None], -jnp.inf, logits), cache

    result = its.run(its.tokens.rollout(dead_end, max_new_tokens=2, pad_id=1), jax.random.key(0),
                     jnp.array([[0, 2], [0, 1]]), num_steps=2)
    out = result.output
    assert int(out.tokens[0, 2]) == 1 and np.isneginf(float(out.log_probs[0, 0]))
    assert not np.isnan(np.asarray(out.log_probs)).any()
    assert np.isfinite(np.asarray(out.log_probs[1])).all()
    assert int(result.stats.nonfinite) > 0


def test_nonfinite_check_watches_logits_and_sequences_not_the_cache():
    """A NaN cache entry that never reaches the logits is not a fault; NaN logits are, at their step."""
    def nan_cache(tokens, cache):
        return MODEL.log_transition[tokens], cache.at[:, 0].set(jnp.nan)

    def nan_logits_after(step):
        def fn(tokens, cache):
            logits = MODEL.log_transition[tokens]
            return jnp.where(cache[:, :1, None] >= step, jnp.nan, logits), cache + 1  # calls: prefill, 0, 1, 2
        return fn

    prompts, key = jnp.array([[0, 2], [0, 1]]), jax.random.key(0)
    init = lambda batch, max_len, start: jnp.zeros((batch, 2))  # noqa: E731
    clean = its.run(its.tokens.rollout(nan_cache, init_cache=init), key, prompts, num_steps=3)
    assert int(clean.stats.nonfinite) == 0
    faulty = its.run(its.tokens.rollout(nan_logits_after(3), init_cache=init), key, prompts, num_steps=3)
    assert int(faulty.stats.first_nonfinite_step) == 2 and int(faulty.stats.nonfinite) > 0


def test_bad_input_raises_clear_errors():
    sampler = its.tokens.rollout(MODEL.logits_fn, max_new_tokens=2)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="prompts must be an integer array"):
        its.run(sampler, key, jnp.zeros((2, 3)), num_steps=2)
    with pytest.raises(ValueError, match=r"prompts must be an int array of shape \(batch, prompt_len\)"):
        its.run(sampler, key, jnp.zeros((3,), int), num_steps=2)
    with pytest.raises(ValueError, match="at least one token"):
        its.run(sampler, key, jnp.zeros((2, 0), int), num_steps=2)
    with pytest.raises(ValueError, match="lengths must have shape"):
        its.run(sampler, key, (jnp.zeros((2, 3), int), jnp.ones(3, int)), num_steps=2)
    with pytest.raises(ValueError, match="num_steps <= 2"):
        its.run(sampler, key, jnp.zeros((2, 3), int), num_steps=3)
    with pytest.raises(ValueError, match="max_len=4"):
        its.run(its.tokens.rollout(MODEL.logits_fn, max_new_tokens=2, max_len=4), key, jnp.zeros((2, 3), int),
                num_steps=2)
    with pytest.raises(ValueError, match="eos_id=7"):
        its.run(its.tokens.rollout(MODEL.logits_fn, max_new_tokens=2, eos_id=7), key, jnp.zeros((2, 3), int),
                num_steps=2)
    with pytest.raises(ValueError, match="expected \\(batch, L, vocab\\)"):
        its.run(its.tokens.rollout(lambda t, c: (MODEL.log_transition[t][:, 0], c), max_new_tokens=2), key,
                jnp.zeros((2, 3), int), num_steps=2)
    with pytest.raises(TypeError, match="logits_fn must be a callable"):
        its.tokens.rollout(None, max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown noise"):
        its.tokens.rollout(MODEL.logits_fn, max_new_tokens=2, noise="fresh")
    with pytest.raises(ValueError, match="params"):
        its.run(sampler, key, jnp.zeros((2, 3), int), num_steps=2, params={"temperature": 1.0, "top_p": 0.5})


def test_default_output_size_is_the_runs_budget():
    """The contract: rollout(logits_fn) run with num_steps=N returns prompt_len + N tokens."""
    key, prompts = jax.random.key(0), jnp.zeros((3, 2), jnp.int32)
    for n in (1, 4):
        out = its.run(its.tokens.rollout(MODEL.logits_fn), key, prompts, num_steps=n).output
        assert out.tokens.shape == (3, 2 + n) and out.log_probs.shape == (3, n)
    fixed = its.run(its.tokens.rollout(MODEL.logits_fn, max_new_tokens=4), key, prompts, num_steps=4).output
    default = its.run(its.tokens.rollout(MODEL.logits_fn), key, prompts, num_steps=4).output
    np.testing.assert_array_equal(fixed.tokens, default.tokens)
    jac = its.run(its.tokens.jacobi(MODEL.logits_fn), key, prompts, num_steps=4).output
    np.testing.assert_array_equal(jac.tokens, default.tokens)
    # Outside its.run, init has no context: a rollout without max_new_tokens cannot size its output.
    with pytest.raises(ValueError, match="max_new_tokens"):
        its.tokens.rollout(MODEL.logits_fn).init(key, prompts, None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        its.tokens.jacobi(MODEL.logits_fn).init(key, prompts, None)
    state = its.tokens.rollout(MODEL.logits_fn).init(key, prompts, None, its.StepContext(jnp.int32(0), 3))
    assert state.seq.tokens.shape == (3, 2 + 3)
