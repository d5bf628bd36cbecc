"""The same SMC and best-of-N over a token rollout: exact answers from a Markov LM by enumeration.

r(tokens) = count of token 2 among the new tokens. The rollout reports no ``x0_hat``, so the
potential is evaluated on the tokens so far (``finalize``): the difference potential then weights
each step by exp(lam [new token == 2]), and log Z = log sum_c p(c | prompt) exp(lam r(c)) is exact by
enumerating the V**L completions.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

import itscale as its

jax.config.update("jax_enable_x64", True)

VOCAB, NEW, PROMPT, TARGET = 3, 4, 0, 2
LM = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.3, 0.2])),
                         jnp.log(jnp.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])))


def _count_target(generation):
    return jnp.sum(generation.tokens[:, 1:] == TARGET, axis=-1).astype(jnp.float64)


def _exact_log_z(lam):
    log_p = LM.completion_log_probs(jnp.array([PROMPT]), NEW)
    completions = its.models.markov.all_sequences(VOCAB, NEW)
    return float(logsumexp(log_p + lam * jnp.sum(completions == TARGET, axis=-1)))


def test_smc_over_a_token_rollout_estimates_the_exact_log_normalizer():
    n, seeds, lam = 128, 20, 1.5
    rollout = its.tokens.rollout(LM.logits_fn, max_new_tokens=NEW, noise="step")
    steered = its.search.smc(rollout, _count_target, num_particles=n, lam=lam, ess_threshold=0.9)
    prompts = jnp.full((n, 1), PROMPT, jnp.int32)
    out = jax.jit(jax.vmap(lambda k: its.run(steered, k, prompts, num_steps=NEW).output))(
        jax.random.split(jax.random.key(0), seeds))
    assert float(np.mean(out.info["num_resamples"])) >= 1
    log_z_hat = np.asarray(out.log_normalizer)
    se = log_z_hat.std(ddof=1) / np.sqrt(seeds)
    assert abs(log_z_hat.mean() - _exact_log_z(lam)) < 3.0 * se + 1e-3
    # The weighted mean count matches the tilted law's.
    log_p = LM.completion_log_probs(jnp.array([PROMPT]), NEW)
    counts = jnp.sum(its.models.markov.all_sequences(VOCAB, NEW) == TARGET, axis=-1)
    tilted_mean = float(jnp.sum(jax.nn.softmax(log_p + lam * counts) * counts))
    means = np.sum(np.exp(out.log_weights) * np.asarray(jax.vmap(_count_target)(out.particles)), axis=1)
    assert abs(means.mean() - tilted_mean) < 3.5 * means.std(ddof=1) / np.sqrt(seeds) + 1e-3


def test_budgets_over_token_samplers_count_every_candidates_prefill():
    """Each candidate or particle prefills its own copy of the prompt (init); the split counts it, so a
    budget bounds the measured NFE and a fixed width reports what it spends."""
    prompts = jnp.array([[0, 1, 2, 0, 1, 2], [2, 1, 0, 2, 1, 0]], jnp.int32)        # P = 6
    rollout = its.tokens.rollout(LM.logits_fn, max_new_tokens=NEW)
    prefill = int(its.run(rollout, jax.random.key(0), prompts[:1], num_steps=NEW).stats.nfe) - NEW
    assert prefill > 0
    for budget in (30, 31, 49):
        result = its.run(its.search.best_of_n(rollout, _count_target, nfe_budget=budget), jax.random.key(1),
                         prompts, num_steps=NEW)
        split = result.output.split
        assert int(split.row_init) == prefill and int(split.width) == budget // (prefill + NEW)
        assert int(result.stats.nfe) == 2 * int(split.nfe_bound) <= 2 * budget
    speculative = its.tokens.speculative(LM.logits_fn, LM.logits_fn, gamma=2, max_new_tokens=NEW)
    result = its.run(its.search.best_of_n(speculative, _count_target, num_candidates=3), jax.random.key(1),
                     prompts, num_steps=NEW)
    split = result.output.split
    assert (int(split.nfe_per_step), int(split.nfe_bound)) == (6, 3 * (int(split.row_init) + NEW * 6))
    assert int(split.row_init) > 0 and int(result.stats.nfe) <= 2 * int(split.nfe_bound)
    n = 4
    steered = its.search.smc(rollout, _count_target, num_particles=n)
    result = its.run(steered, jax.random.key(2), jnp.repeat(prompts[:1], n, axis=0), num_steps=NEW)
    assert int(result.output.split.nfe_bound) == int(result.stats.nfe) == n * (prefill + NEW)


def test_best_of_n_over_a_token_rollout():
    rollout = its.tokens.rollout(LM.logits_fn, max_new_tokens=NEW)
    result = its.run(its.search.best_of_n(rollout, _count_target, num_candidates=8), jax.random.key(1),
                     jnp.array([[0], [1]], jnp.int32), num_steps=NEW)
    out = result.output
    assert out.best.tokens.shape == (2, 1 + NEW) and out.candidates.tokens.shape == (2, 8, 1 + NEW)
    np.testing.assert_array_equal(out.best_score, np.max(np.asarray(out.scores), axis=1))
    np.testing.assert_array_equal(_count_target(out.best), out.best_score)
    assert int(result.stats.verifier_calls) == 16


def test_resampled_copies_of_a_default_rollout_draw_fresh_noise():
    """The default rollout (``noise="position"``) keeps per-row noise keys in its state; resampling
    leaves them in their slots, so copies diverge instead of repeating their parent's draws.

    Every step resamples (a peaked reward); after the last resampling the m copies of a prefix draw
    their last token independently from the uniform next-token law: V (1 − (1 − 1/V)^m) distinct ones
    in expectation. With the keys copied along, each prefix had one continuation and the population
    collapsed to a handful of sequences. A raw ``PRNGKey`` gives typed keys to the sampler just the same.
    """
    vocab, new, n, target = 6, 8, 256, 2
    lm = its.models.MarkovLM(jnp.zeros(vocab), jnp.zeros((vocab, vocab)))
    reward = lambda g: jnp.sum(g.tokens[:, 1:] == target, axis=-1).astype(jnp.float32)  # noqa: E731
    steered = its.search.smc(its.tokens.rollout(lm.logits_fn), reward, num_particles=n, lam=4.0,
                             ess_threshold=1.0)
    run = jax.jit(lambda key: its.run(steered, key, jnp.zeros((n, 1), jnp.int32), num_steps=new).output)
    for key in (jax.random.key(0), jax.random.PRNGKey(1)):
        out = run(key)
        assert int(out.info["num_resamples"]) == new - 1
        tokens = np.asarray(out.particles.tokens)
        _, copies = np.unique(tokens[:, :-1], axis=0, return_counts=True)
        expected = np.sum(vocab * (1.0 - (1.0 - 1.0 / vocab) ** copies))
        distinct = len(np.unique(tokens, axis=0))
        assert distinct >= 0.8 * expected, (distinct, expected, len(copies))
