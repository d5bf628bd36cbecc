"""Token SMC (the generic its.search.smc on a step rollout) against exact enumeration: the constraint
"the completion contains token A" under a MarkovLM, Z = P(A appears). log Z-hat is unbiased for Z (not
log Z): over 20 seeds mean(Z-hat / Z) = 1 and mean(log Z-hat) = log Z within 3 standard errors, with
the exact twist P(A appears | prefix) and with a heuristic twist that makes SMC resample.
Figures at the time of writing (N = 256 particles, 5 tokens, Z = 0.1611): exact twist
mean log Z-hat − log Z = 0.006 (SE 0.033), mean Z-hat / Z = 1.016 (SE 0.032), 3.0 resamplings/run;
heuristic twist −0.061 (SE 0.044), 0.959 (SE 0.043), 2.0 resamplings/run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.models.markov import all_sequences

from .search_exact import (completion_contains, contains_probability, exact_contains_probability,
                           rare_token_model)

jax.config.update("jax_enable_x64", True)

V, L, A, N, SEEDS = 4, 5, 3, 256, 20
MODEL = rare_token_model(A, V)                                    # A is rare: Z = 0.16
PROMPT = jnp.array([[1]])
BUDGET = 1 + N * L
Z = exact_contains_probability(MODEL, 1, A, L)


def exact_twist(generation):
    """log P(A appears in the L new tokens | prefix): the optimal twist, log 1[A appeared] at the end."""
    return jnp.log(contains_probability(MODEL, A, L)(generation))


def heuristic_twist(generation):
    """log 1 while A has not appeared and log 8 once it has; log 1[A appeared] at the end."""
    done = generation.lengths - generation.prompt_lengths == L
    seen = completion_contains(generation, A)
    return jnp.where(done, jnp.where(seen, 0.0, -jnp.inf), jnp.where(seen, jnp.log(8.0), 0.0))


def _runs(twist, seed):
    sampler = its.tokens.token_smc(MODEL.logits_fn, twist, nfe_budget=BUDGET, num_steps=L, step_length=1)

    def one(key):
        result = its.run(sampler, key, PROMPT, num_steps=L)
        return result.output, result.stats

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), SEEDS))


def _check_unbiased(out):
    log_z_hat = np.asarray(out.log_normalizer)[:, 0]
    assert np.all(np.isfinite(log_z_hat))
    se = log_z_hat.std(ddof=1) / np.sqrt(SEEDS)
    assert abs(log_z_hat.mean() - np.log(Z)) < 3 * se + 1e-3, (log_z_hat.mean(), np.log(Z), se)
    ratio = np.exp(log_z_hat - np.log(Z))
    assert abs(ratio.mean() - 1) < 3 * ratio.std(ddof=1) / np.sqrt(SEEDS) + 1e-3


def test_exact_probability_of_the_constraint():
    sequences = np.asarray(all_sequences(V, L))
    law = np.exp(np.asarray(MODEL.completion_log_probs(PROMPT[0], L)))
    np.testing.assert_allclose(law[np.any(sequences == A, axis=1)].sum(), Z, rtol=1e-12)


def test_log_normalizer_with_the_exact_twist_matches_enumeration_and_spends_the_budget():
    out, stats = _runs(exact_twist, 0)
    _check_unbiased(out)
    np.testing.assert_array_equal(stats.nfe, BUDGET)                  # prompt once + N particles x L tokens
    np.testing.assert_array_equal(stats.verifier_calls, N * L)
    np.testing.assert_array_equal(stats.nonfinite, 0)
    assert int(out.split.width[0]) == N and int(out.split.nfe_bound[0]) == BUDGET
    # every final particle satisfies the constraint (the exact twist kills the others on the way)
    particles = out.particles
    satisfied = np.asarray(jnp.any(particles.tokens[..., 1:] == A, axis=-1))
    weights = np.exp(np.asarray(out.log_weights))
    np.testing.assert_allclose((weights * satisfied).sum(-1), 1.0, atol=1e-12)


def test_log_normalizer_with_a_heuristic_twist_and_resampling_matches_enumeration():
    out, _ = _runs(heuristic_twist, 1)
    assert float(np.mean(out.info["num_resamples"])) > 0.5
    _check_unbiased(out)
    assert not np.any(np.isnan(np.asarray(out.log_weights)))


def test_a_batch_of_queries_is_the_per_query_smc_noise_and_nfe_included():
    """Several queries: one token loop moves all their particles, and the result -- NFE included, with
    queries that end their steps at different times -- is its.particles over the per-query SMC."""
    rng = np.random.default_rng(0)
    model = its.models.MarkovLM(np.zeros(6), 2 * rng.normal(size=(6, 6)))
    queries, n, steps, length = 5, 6, 4, 5
    prompts = jnp.asarray(rng.integers(0, 6, size=(queries, 3)))
    options = dict(separator_id=2, eos_id=5)
    twist = lambda generation: 0.5 * (generation.tokens.sum(-1) % 5)  # noqa: E731
    sampler = its.tokens.token_smc(model.logits_fn, twist, nfe_budget=3 + n * steps * length, num_steps=steps,
                                   step_length=length, ess_threshold=0.7, **options)
    rollout = its.tokens.step_rollout(model.logits_fn, step_length=length, noise="step",
                                      max_new_tokens=steps * length, **options)
    reference = its.particles(its.search.smc(its.tokens.search.shared_prompt(rollout, n), twist, num_particles=n,
                                             ess_threshold=0.7), queries)
    key = jax.random.key(2)
    out = its.run(sampler, key, prompts, num_steps=steps)
    ref = its.run(reference, key, jnp.repeat(prompts[:, None], n, axis=1), num_steps=steps)
    chex.assert_trees_all_equal(out.output._replace(split=None), ref.output._replace(split=None))
    assert 0 < np.count_nonzero(ref.output.info["num_resamples"]) < queries         # some queries resample, some not
    assert int(out.stats.verifier_calls) == int(ref.stats.verifier_calls) == queries * n * steps
    assert int(out.stats.nfe) == int(ref.stats.nfe) < queries * (3 + n * steps * length)


def test_budget_below_one_particle_is_refused():
    with pytest.raises(ValueError, match="nfe_budget=5 is too small.*give nfe_budget >= 6"):
        its.tokens.token_smc(MODEL.logits_fn, exact_twist, nfe_budget=5, num_steps=L, step_length=1)
    with pytest.raises(ValueError, match="potential"):
        its.tokens.token_smc(MODEL.logits_fn, exact_twist, nfe_budget=BUDGET, num_steps=L, step_length=1,
                             potential="product")


def test_kv_cache_rows_and_their_potentials_stay_aligned():
    """With a transformer (KV-cache rows over 4 KiB, copied in place) the rollout rows and the SMC state
    (potentials) are resampled in two calls. Resampling after every token, each particle's final
    log-weight is, up to one constant, twist(its tokens) − twist(its tokens but the last one): a
    particle paired with another's potential breaks that."""
    from flax import nnx

    from itscale.models.transformer import Transformer, logits_fn
    from itscale.search import in_place

    model = Transformer(8, width=128, depth=1, num_heads=2, max_len=16, rngs=nnx.Rngs(0))
    steps, n, prompt = 6, 64, jnp.array([[1, 2, 3]])
    # the rollout's cache holds prompt + new tokens: its rows must be large enough to be copied in place
    assert model.init_cache(1, prompt.shape[1] + steps).keys[0].nbytes >= in_place.IN_PLACE_MIN_ROW_BYTES

    def twist(generation):
        return 0.3 * (jnp.sum(generation.tokens[:, prompt.shape[1]:], axis=-1) % 7)

    sampler = its.tokens.token_smc(logits_fn(model), twist, nfe_budget=prompt.shape[1] + n * steps,
                                   num_steps=steps, step_length=1, ess_threshold=1.0,
                                   init_cache=model.init_cache, max_len=16)
    out = its.run(sampler, jax.random.key(0), prompt, num_steps=steps).output
    assert int(out.info["num_resamples"][0]) == steps - 1
    new = np.asarray(out.particles.tokens)[0, :, prompt.shape[1]:]
    last = 0.3 * (new.sum(-1) % 7)
    before = 0.3 * (new[:, :-1].sum(-1) % 7)
    offset = np.asarray(out.log_weights)[0] - (last - before)
    np.testing.assert_allclose(offset, offset[0], atol=1e-5)
