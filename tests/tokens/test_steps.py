"""Step-structured generation: step boundaries, and step_rollout producing one reasoning step per run step
(same tokens as rollout for the same key, exact NFE, per-step log-probabilities)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its

jax.config.update("jax_enable_x64", True)

SEP = 2
TOKENS = jnp.array([[7, 7, 1, 2, 3, 3, 3, 3, 2, 0, 0],
                    [7, 1, 1, 1, 1, 2, 2, 1, 0, 0, 0]])
LENGTHS, PROMPT_LENGTHS = jnp.array([9, 8]), jnp.array([2, 1])


def test_step_ends_by_separator_by_length_and_both():
    by_separator = np.asarray(its.tokens.step_ends(TOKENS, LENGTHS, PROMPT_LENGTHS, separator_id=SEP))
    np.testing.assert_array_equal(np.flatnonzero(by_separator[0]), [3, 8])
    np.testing.assert_array_equal(np.flatnonzero(by_separator[1]), [5, 6, 7])        # last, partial step
    by_length = np.asarray(its.tokens.step_ends(TOKENS, LENGTHS, PROMPT_LENGTHS, step_length=3))
    np.testing.assert_array_equal(np.flatnonzero(by_length[0]), [4, 7, 8])
    np.testing.assert_array_equal(np.flatnonzero(by_length[1]), [3, 6, 7])
    both = np.asarray(its.tokens.step_ends(TOKENS, LENGTHS, PROMPT_LENGTHS, separator_id=SEP, step_length=3))
    np.testing.assert_array_equal(np.flatnonzero(both[0]), [3, 6, 8])
    np.testing.assert_array_equal(np.flatnonzero(both[1]), [3, 5, 6, 7])
    index = np.asarray(its.tokens.step_index(TOKENS, LENGTHS, PROMPT_LENGTHS, separator_id=SEP))
    np.testing.assert_array_equal(index[0], [-1, -1, 0, 0, 1, 1, 1, 1, 1, -1, -1])
    np.testing.assert_array_equal(index[1], [-1, 0, 0, 0, 0, 0, 1, 2, -1, -1, -1])


def test_step_split_errors():
    with pytest.raises(ValueError, match="separator_id"):
        its.tokens.step_ends(TOKENS, LENGTHS, PROMPT_LENGTHS)
    with pytest.raises(ValueError, match="step_length"):
        its.tokens.step_ends(TOKENS, LENGTHS, PROMPT_LENGTHS, step_length=0)
    with pytest.raises(ValueError, match="shape"):
        its.tokens.step_ends(TOKENS, LENGTHS[:1], PROMPT_LENGTHS, separator_id=SEP)
    with pytest.raises(TypeError, match="step_length"):
        its.tokens.step_rollout(lambda t, c: (t, c), step_length=None, max_new_tokens=4)


def test_step_rollout_generates_one_step_per_run_step():
    rng = np.random.default_rng(0)
    model = its.models.MarkovLM(np.zeros(4), rng.normal(size=(4, 4)))
    batch, prompt_len, new, step_length = 32, 2, 8, 3
    prompts = jnp.asarray(rng.integers(0, 4, size=(batch, prompt_len)))
    key = jax.random.key(3)
    sampler = its.tokens.step_rollout(model.logits_fn, step_length=step_length, separator_id=SEP,
                                      max_new_tokens=new)
    result = its.run(sampler, key, prompts, num_steps=new, trace=lambda state: state.seq.generated)
    out = result.output
    rollout = its.tokens.rollout(model.logits_fn, max_new_tokens=new)
    reference = its.run(rollout, key, prompts, num_steps=new).output
    for field in ("tokens", "log_probs", "sample_log_probs", "lengths"):
        np.testing.assert_array_equal(np.asarray(getattr(out, field)), np.asarray(getattr(reference, field)))
    # after run step k, each row holds exactly its first k reasoning steps
    ends = np.asarray(its.tokens.step_ends(out.tokens, out.lengths, out.prompt_lengths, separator_id=SEP,
                                           step_length=step_length))
    generated = np.asarray(result.trace.state)                                   # (num_steps, batch)
    for row in range(batch):
        boundaries = np.flatnonzero(ends[row]) - prompt_len + 1                  # tokens after each step
        expected = np.minimum(np.append(boundaries, new)[np.minimum(np.arange(new), boundaries.size)], new)
        np.testing.assert_array_equal(generated[:, row], expected)
    increments = np.diff(np.concatenate([np.zeros((1, batch), int), generated]), axis=0)
    assert int(result.stats.nfe) == batch * prompt_len + batch * increments.max(axis=1).sum()
    assert increments.max() <= step_length
    np.testing.assert_allclose(np.asarray(result.trace.info["log_prob"]).sum(0),
                               np.asarray(out.sample_log_probs).sum(1), atol=1e-12)
    np.testing.assert_array_equal(np.asarray(result.trace.info["step_tokens"]), increments)


def test_grouped_step_rollout_is_particles_over_the_groups_noise_and_nfe_included():
    """group_size=n on G·n rows: the tokens, step info and NFE of its.particles(step_rollout, G) on the
    (G, n) layout, with groups that stop their steps at different times (EOS, separators)."""
    rng = np.random.default_rng(1)
    model = its.models.MarkovLM(np.zeros(6), 2 * rng.normal(size=(6, 6)))
    groups, n, steps, length = 5, 4, 4, 5
    prompts = jnp.asarray(rng.integers(0, 6, size=(groups, n, 3)))
    options = dict(step_length=length, separator_id=SEP, eos_id=5, noise="step", max_new_tokens=steps * length)
    grouped = its.tokens.step_rollout(model.logits_fn, group_size=n, **options)
    reference = its.particles(its.tokens.step_rollout(model.logits_fn, **options), groups)
    key, info = jax.random.key(4), lambda state: state.seq.generated
    out = its.run(grouped, key, prompts.reshape(groups * n, -1), num_steps=steps, trace=info)
    ref = its.run(reference, key, prompts, num_steps=steps, trace=info)
    for field in ("tokens", "log_probs", "sample_log_probs", "lengths"):
        expected = np.asarray(getattr(ref.output, field))
        np.testing.assert_array_equal(np.asarray(getattr(out.output, field)),
                                      expected.reshape((groups * n,) + expected.shape[2:]))
    np.testing.assert_array_equal(np.asarray(out.trace.info["step_tokens"]).reshape(steps, groups, n),
                                  np.asarray(ref.trace.info["step_tokens"]))
    assert int(out.stats.nfe) == int(ref.stats.nfe) < groups * n * (3 + steps * length)
    # What the shared loop computed: every row at every iteration (as many as the longest step), of which
    # the rows of stopped groups are reported apart, not charged.
    iterations = np.asarray(out.trace.info["step_tokens"]).max(axis=1).sum()
    padded = int(np.asarray(out.trace.info["padded_nfe"]).sum())
    assert padded > 0 and int(out.stats.nfe) + padded == groups * n * (3 + iterations)
    with pytest.raises(ValueError, match="group_size=3 must divide"):
        its.run(its.tokens.step_rollout(model.logits_fn, group_size=3, **options), key, prompts[0],
                num_steps=steps)
    with pytest.raises(ValueError, match="group_size"):
        its.tokens.step_rollout(model.logits_fn, group_size=0, **options)


def test_step_rollout_without_max_new_tokens_holds_num_steps_times_step_length_columns():
    """max_new_tokens=None: init reads the run's num_steps from its context and allocates
    num_steps · step_length new columns (a run step generates at most step_length tokens)."""
    rng = np.random.default_rng(2)
    model = its.models.MarkovLM(np.zeros(5), rng.normal(size=(5, 5)))
    batch, prompt_len, step_length = 6, 3, 4
    prompts = jnp.asarray(rng.integers(0, 5, size=(batch, prompt_len)))
    key = jax.random.key(5)
    options = dict(step_length=step_length, separator_id=SEP)
    for n in (1, 3):
        default = its.run(its.tokens.step_rollout(model.logits_fn, **options), key, prompts, num_steps=n).output
        fixed = its.run(its.tokens.step_rollout(model.logits_fn, max_new_tokens=n * step_length, **options),
                        key, prompts, num_steps=n).output
        assert default.tokens.shape == (batch, prompt_len + n * step_length)
        for field in ("tokens", "log_probs", "sample_log_probs", "lengths"):
            np.testing.assert_array_equal(np.asarray(getattr(default, field)),
                                          np.asarray(getattr(fixed, field)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        its.tokens.step_rollout(model.logits_fn, step_length=step_length).init(key, prompts, None)
