"""MDLM / ReMDM / first-hitting / MaskGIT as Samplers: ReMDM with σ = 0 is MDLM bit for bit, the σ_t
schedules, masking schedules, NFE, composition with SMC (exact log Z of a tilted chain) and best-of-N,
models with traced weights, non-finite logits and argument errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.core.run import SaveAt, _run
from itscale.hybrid.exact_conditionals import evidence, markov_denoiser, posterior_marginals
from itscale.hybrid.first_hitting import first_hitting
from itscale.hybrid.mask_schedules import COSINE, LOG_LINEAR, mask_schedule
from itscale.hybrid.masked_diffusion import mdlm, remdm
from itscale.hybrid.maskgit import maskgit
from itscale.models.markov import all_sequences

jax.config.update("jax_enable_x64", True)

V, L, BATCH, MASK = 3, 4, 512, 3
CHAIN = its.models.MarkovLM(jnp.log(jnp.array([0.5, 0.3, 0.2])),
                            jnp.log(jnp.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.05, 0.7]])))
DENOISER = markov_denoiser(CHAIN, mask_id=MASK)
X = jnp.full((BATCH, L), MASK, jnp.int32)
INFO = SaveAt(every=1, fn=lambda state: ())            # record the step infos only
MDLM, FIRST_HITTING = mdlm(DENOISER, mask_id=MASK), first_hitting(DENOISER, mask_id=MASK)


@functools.cache
def mdlm_reference():
    return its.run(MDLM, jax.random.key(3), X, num_steps=8).output


def test_remdm_with_zero_sigma_is_mdlm_bit_for_bit_and_sigma_follows_its_schedule():
    key, k = jax.random.key(3), 8
    reference = mdlm_reference()
    t, s = 1 - np.arange(k) / k, 1 - (np.arange(k) + 1) / k
    alpha_t, alpha_s = 1 - t, 1 - s                                           # log-linear
    sigma_max = np.where(alpha_t > 0, np.minimum(1, (1 - alpha_s) / np.where(alpha_t > 0, alpha_t, 1)), 1)
    for remasking, eta, expected in (("cap", 0.2, np.minimum(0.2, sigma_max)), ("rescale", 0.5, 0.5 * sigma_max)):
        sampler = remdm(DENOISER, mask_id=MASK, remasking=remasking, eta=eta)
        same = its.run(sampler, key, X, num_steps=k, params={"eta": 0.0}, trace=INFO)
        np.testing.assert_array_equal(np.asarray(same.trace.info["sigma"]), 0.0)
        for field in ("tokens", "log_probs", "num_masked"):
            np.testing.assert_array_equal(np.asarray(getattr(same.output, field)),
                                          np.asarray(getattr(reference, field)))
        remasked = its.run(sampler, key, X, num_steps=k, trace=INFO)           # default η (same compilation)
        np.testing.assert_allclose(np.asarray(remasked.trace.info["sigma"]), expected, atol=1e-12)
        assert int(np.sum(remasked.trace.info["remasked"])) > 0
        assert not np.array_equal(np.asarray(remasked.output.tokens), np.asarray(reference.tokens))
        assert (np.asarray(remasked.output.num_masked) == 0).all() and int(remasked.stats.nonfinite) == 0


def test_remdm_loop_remasks_only_inside_the_loop():
    loop = remdm(DENOISER, mask_id=MASK, remasking="loop", eta=0.1, t_on=0.55, t_off=0.07,
                 schedule="cosine")
    result = its.run(loop, jax.random.key(0), X, num_steps=20, trace=INFO)
    t, s = 1 - np.arange(20) / 20, 1 - (np.arange(20) + 1) / 20
    looping = (t <= 0.55) & (s >= 0.07)
    sigma = np.asarray(result.trace.info["sigma"])
    assert looping.sum() == 9 and (sigma[looping] > 0).all() and (sigma[~looping] == 0).all()
    assert (np.asarray(result.trace.info["remasked"])[~looping] == 0).all()
    assert int(np.sum(result.trace.info["remasked"])) > 0
    assert (np.asarray(result.output.num_masked) == 0).all() and int(result.stats.nonfinite) == 0


def test_mask_schedules():
    t = jnp.linspace(0.0, 1.0, 11)
    for schedule in (LOG_LINEAR, COSINE):
        alpha = np.asarray(schedule.alpha(t))
        assert alpha[0] == 1 and alpha[-1] <= 1e-15 and (np.diff(alpha) < 0).all()
        np.testing.assert_allclose(np.asarray(schedule.time_of(schedule.alpha(t))), np.asarray(t), atol=1e-7)
    assert mask_schedule("cosine") is COSINE and mask_schedule(LOG_LINEAR) is LOG_LINEAR
    with pytest.raises(ValueError, match="schedule"):
        mask_schedule("linear-ish")


def test_impossible_rows_and_missing_steps_leave_positions_masked():
    forbidden = its.models.MarkovLM(CHAIN.initial_log_probs(), CHAIN.log_transition.at[0, 2].set(-jnp.inf))
    denoiser = markov_denoiser(forbidden, mask_id=MASK)
    impossible = jnp.array([0, 2, MASK, MASK], jnp.int32)                      # 0 -> 2 has probability 0
    x = jnp.full((4, L), MASK, jnp.int32).at[0].set(impossible)
    samplers = ((first_hitting(denoiser, mask_id=MASK), L - 1, 1), (mdlm(denoiser, mask_id=MASK), L, 0))
    for sampler, steps, left in samplers:
        result = its.run(sampler, jax.random.key(0), x, num_steps=steps)
        out = result.output
        np.testing.assert_array_equal(np.asarray(out.tokens[0]), [0, 2, MASK, MASK])
        assert np.isneginf(np.asarray(out.log_probs[0, 2:])).any() and int(result.stats.nonfinite) > 0
        assert int(out.num_masked[0]) == 2 and (np.asarray(out.num_masked[1:]) == left).all()


def test_smc_over_first_hitting_recovers_the_exact_tilted_normaliser():
    lam, num_particles, num_seeds = 0.7, 256, 16
    sequences = np.asarray(all_sequences(V, L))
    log_p = np.asarray(CHAIN.completion_log_probs(jnp.zeros((0,), jnp.int32), L))
    reward_of = (sequences == 0).sum(axis=1)
    log_z = np.logaddexp.reduce(log_p + lam * reward_of)
    tilted_mean = np.exp(log_p + lam * reward_of - log_z) @ reward_of

    def reward(out):
        return jnp.sum(out.tokens == 0, axis=1).astype(jnp.float64)

    steered = its.search.smc(first_hitting(DENOISER, mask_id=MASK), reward, num_particles=num_particles,
                             lam=lam, ess_threshold=0.9)
    x = jnp.full((num_particles, L), MASK, jnp.int32)
    results = [its.run(steered, key, x, num_steps=L) for key in jax.random.split(jax.random.key(5), num_seeds)]
    assert all(int(r.stats.nfe) == num_particles * L and int(r.stats.verifier_calls) == num_particles * L
               for r in results)
    out = jax.tree.map(lambda *leaves: np.stack(leaves), *(r.output for r in results))
    assert float(np.mean(out.info["num_resamples"])) >= 1 and int(np.sum(out.invalid_rewards)) == 0
    ratio = np.exp(np.asarray(out.log_normalizer) - log_z)                     # Z-hat / Z: unbiased for 1
    assert abs(ratio.mean() - 1) < 3 * ratio.std(ddof=1) / np.sqrt(num_seeds) + 1e-3
    zeros = (np.asarray(out.particles.tokens) == 0).sum(axis=-1)
    means = np.einsum("sn,sn->s", np.exp(np.asarray(out.log_weights)), zeros)
    assert abs(means.mean() - tilted_mean) < 3.5 * means.std(ddof=1) / np.sqrt(num_seeds) + 1e-3


def test_best_of_n_keeps_the_best_decoded_candidate():
    def reward(out):
        return jnp.sum(out.tokens == 2, axis=1).astype(jnp.float64)

    n, queries = 8, 16
    search = its.search.best_of_n(maskgit(DENOISER, mask_id=MASK), reward, num_candidates=n)
    result = its.run(search, jax.random.key(2), X[:queries], num_steps=L)
    out = result.output
    scores = np.asarray(out.scores)
    assert scores.shape == (queries, n) and int(result.stats.nfe) == queries * n * L
    np.testing.assert_array_equal(np.asarray(out.best_score), scores.max(axis=1))
    np.testing.assert_array_equal(np.asarray(reward(out.best)), scores.max(axis=1))
    assert len({tuple(row) for row in np.asarray(out.candidates.tokens)[0]}) > 1   # candidates differ


def _markov_apply(weights, tokens, t):
    log_initial, log_transition = weights
    return posterior_marginals(log_initial, log_transition, evidence(tokens, MASK, V))


def test_a_bound_denoiser_has_traced_weights():
    weights = (CHAIN.initial_log_probs(), CHAIN.log_transition)
    key = jax.random.key(3)
    bound = its.run(mdlm(its.models.bind(_markov_apply, weights), mask_id=MASK), key, X, num_steps=8).output
    np.testing.assert_array_equal(np.asarray(bound.tokens), np.asarray(mdlm_reference().tokens))
    compiled = _run._cache_size()
    uniform = (jnp.zeros(V) - np.log(V), jnp.zeros((V, V)) - np.log(V))
    other = its.run(mdlm(its.models.bind(_markov_apply, uniform), mask_id=MASK), key, X, num_steps=8).output
    assert _run._cache_size() == compiled                                     # new weights: no retrace
    assert not np.array_equal(np.asarray(other.tokens), np.asarray(bound.tokens))


def test_nan_logits_leave_the_position_masked_and_are_reported():
    def broken(tokens, t):
        logits = DENOISER(tokens, t)
        return logits.at[0].set(jnp.nan)                                   # row 0: no possible token

    result = its.run(maskgit(broken, mask_id=MASK), jax.random.key(0), X[:4], num_steps=L)
    out = result.output
    assert int(out.num_masked[0]) == L and (np.asarray(out.num_masked[1:]) == 0).all()
    assert int(result.stats.nonfinite) > 0 and not np.isnan(np.asarray(out.log_probs)).any()


def test_argument_errors():
    with pytest.raises(ValueError, match="remasking"):
        remdm(DENOISER, mask_id=MASK, remasking="conf")
    with pytest.raises(ValueError, match="eta"):
        remdm(DENOISER, mask_id=MASK, eta=1.5)
    with pytest.raises(ValueError, match="t_off"):
        remdm(DENOISER, mask_id=MASK, remasking="loop", t_on=0.2, t_off=0.5)
    with pytest.raises(ValueError, match="mask_id"):
        mdlm(DENOISER, mask_id=-1)
    with pytest.raises(ValueError, match="mask_id"):
        markov_denoiser(CHAIN, mask_id=1)
    with pytest.raises(TypeError, match="denoiser_fn"):
        first_hitting(None, mask_id=MASK)
    with pytest.raises(ValueError, match="temperature"):
        maskgit(DENOISER, mask_id=MASK, temperature=-1.0)
    sampler = remdm(DENOISER, mask_id=MASK, remasking="rescale")
    with pytest.raises(ValueError, match="eta"):
        its.run(sampler, jax.random.key(0), X, num_steps=2, params={"eta": 2.0})
    with pytest.raises(ValueError, match="x"):
        its.run(sampler, jax.random.key(0), X[0], num_steps=2)
    with pytest.raises(ValueError, match="negative"):
        its.run(sampler, jax.random.key(0), X - 5, num_steps=2)
    with pytest.raises(ValueError, match="logits of shape"):
        its.run(mdlm(lambda tokens, t: jnp.zeros((1, V)), mask_id=MASK), jax.random.key(0), X, num_steps=1)
