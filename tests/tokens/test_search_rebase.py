"""REBASE on a MarkovLM with EOS and a PRM that is −inf or NaN on some prefixes (and −inf on every
sequence of one query): completed nodes keep exactly one slot and are never dropped, invalid verdicts are
counted, nothing is NaN, a query with no possible node is reported; a low balance temperature T gives
the high-reward nodes the children (more correct completions than a high T) and changing T never
recompiles; NFE within the budget, split reported. Figures at the time of writing (100 seeds): fraction
of kept completions containing A 0.73 at T = 0.05 and 0.40 at T = 20 (paired t-test p = 1e-19); NFE
77 and 73 per query on average for a budget of 97 (EOS stops rows early)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import itscale as its

from .search_exact import completion_contains, contains_probability, rare_token_model

jax.config.update("jax_enable_x64", True)

V, L, A, EOS, WIDTH, SEEDS = 4, 6, 3, 2, 16, 100
MODEL = rare_token_model(A, V)
PROMPTS = jnp.array([[1], [3]])          # the PRM rules out every sequence of the second query
BUDGET = 1 + WIDTH * L


def _last_two(generation):
    columns = generation.lengths[:, None] - jnp.array([2, 1])
    tokens = jnp.take_along_axis(generation.tokens, jnp.maximum(columns, 0), axis=1)
    return tokens[:, 0], tokens[:, 1], generation.lengths - generation.prompt_lengths >= 2


def prm(generation):
    """P(A appears | prefix) (ignoring EOS); −inf after "0 0", NaN after "1 1", −inf for prompt 3."""
    first, second, two = _last_two(generation)
    reward = contains_probability(MODEL, A, L)(generation)
    reward = jnp.where(two & (first == 0) & (second == 0), -jnp.inf, reward)
    reward = jnp.where(two & (first == 1) & (second == 1), jnp.nan, reward)
    return jnp.where(generation.tokens[:, 0] == 3, -jnp.inf, reward)


@functools.cache
def _runs():
    """Outputs, stats and traces (live, rank, finished) for T = 0.05 and 20: one compilation."""
    sampler = its.tokens.rebase(MODEL.logits_fn, prm, nfe_budget=BUDGET, num_steps=L, step_length=1,
                                eos_id=EOS)
    sampler = sampler._replace(step=chex.assert_max_traces(sampler.step, n=1))

    def one(key, params):
        result = its.run(sampler, key, PROMPTS, num_steps=L, params=params,
                         trace=lambda s: (s.live, s.rank, s.base.seq.finished))
        return result.output, result.stats, result.trace.state

    runs = jax.jit(jax.vmap(one, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), SEEDS)
    return {t: runs(keys, its.tokens.RebaseParams(sampler.params.base, t)) for t in (0.05, 20.0)}


def test_completed_nodes_keep_one_slot_and_invalid_rewards_are_masked():
    for out, run_stats, (live, rank, finished) in _runs().values():
        assert np.all(np.asarray(run_stats.nonfinite) == 0)
        assert np.all(np.asarray(run_stats.nfe) <= 2 * BUDGET)
        assert np.all(np.asarray(out.split.nfe_bound) == BUDGET)
        assert int(np.sum(out.invalid_rewards)) > 0
        scores = np.asarray(out.scores)
        assert not np.isnan(scores).any() and not np.isnan(np.asarray(out.best_score)).any()
        # query 0: some node survives, best = max live score; query 1: every node impossible, reported
        assert np.all(np.asarray(out.valid)[:, 0]) and np.all(np.isfinite(np.asarray(out.best_score)[:, 0]))
        np.testing.assert_array_equal(np.asarray(out.best_score)[:, 0], scores[:, 0].max(-1))
        assert not np.asarray(out.valid)[:, 1].any() and np.all(np.asarray(out.best_score)[:, 1] == -np.inf)
        live, rank = np.asarray(live)[:, :, 0], np.asarray(rank)[:, :, 0]                  # (seeds, steps, W)
        finished = np.asarray(finished).reshape(SEEDS, L, 2, WIDTH)[:, :, 0]
        complete = live & finished
        assert complete.any() and not np.any(complete & (rank > 0))                   # one slot each
        assert np.all(np.diff(complete.sum(-1), axis=1) >= 0)                          # never dropped
        assert np.all(live.sum(-1) <= WIDTH)


def test_low_balance_temperature_gives_high_reward_nodes_the_children():
    fractions = {}
    for temperature, (out, _, _) in _runs().items():
        live = np.asarray(out.scores)[:, 0] > -np.inf
        flat = jax.tree.map(lambda a: a[:, 0].reshape((-1,) + a.shape[3:]), out.candidates)
        correct = np.asarray(completion_contains(flat, A)).reshape(live.shape)
        fractions[temperature] = (correct & live).sum(1) / live.sum(1)
    assert stats.ttest_rel(fractions[0.05], fractions[20.0], alternative="greater").pvalue < 1e-4


def test_rebase_argument_errors():
    with pytest.raises(ValueError, match="reward_temperature"):
        its.tokens.rebase(MODEL.logits_fn, prm, nfe_budget=BUDGET, num_steps=L, step_length=1,
                          reward_temperature=0.0)
    with pytest.raises(ValueError, match="nfe_budget=6 is too small"):
        its.tokens.rebase(MODEL.logits_fn, prm, nfe_budget=6, num_steps=L, step_length=1)
    with pytest.raises(TypeError, match="reward_fn"):
        its.tokens.rebase(MODEL.logits_fn, None, nfe_budget=BUDGET, num_steps=L, step_length=1)
