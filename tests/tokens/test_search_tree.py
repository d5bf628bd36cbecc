"""The tree-search engine with sampled expansion: DVTS and beam search with the exact PRM
r = P(completion contains A | prefix) of a MarkovLM where A is rare (Z = 0.179 in 6 tokens), steps of
two tokens. NFE equals the planned bound (the budget's split, reported), one node per DVTS subtree,
kept nodes far more often correct than plain samples; the selection rules against direct references.
Figures at the time of writing (100 seeds): DVTS subtree finals correct 0.66 / 0.67 (Z = 0.18 / 0.16),
its answer correct 0.99."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import itscale as its
from itscale.tokens.search import balance_children, keep_best_child, keep_top_beams
from itscale.tokens.search.rebase import RebaseParams

from .search_exact import (completion_contains, contains_probability, exact_contains_probability,
                           rare_token_model)

jax.config.update("jax_enable_x64", True)

V, A, STEPS, STEP_LENGTH, SEEDS = 4, 3, 3, 2, 100
L = STEPS * STEP_LENGTH
MODEL = rare_token_model(A, V)
PROMPTS = jnp.array([[1], [2]])
Z = np.array([exact_contains_probability(MODEL, p, A, L) for p in (1, 2)])
PRM = contains_probability(MODEL, A, L)
BUDGET = 1 + 16 * L + 5                # 16 rows of 6 tokens after the prompt, 5 NFE left over


def _runs(sampler):
    def one(key):
        result = its.run(sampler, key, PROMPTS, num_steps=STEPS)
        return result.output, result.stats

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), SEEDS))


def _correct(generations):
    """Each sequence (leading axes those of ``lengths``) contains A."""
    lead = generations.lengths.shape
    flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(lead):]), generations)
    return np.asarray(completion_contains(flat, A)).reshape(lead)


def _check_budget(out, run_stats, groups, group_width):
    split = jax.tree.map(lambda a: int(a[0]), out.split)
    assert (split.width, split.num_groups, split.group_width) == (16, groups, group_width)
    assert (split.nfe_budget, split.nfe_bound, split.prompt_tokens) == (BUDGET, BUDGET - 5, 1)
    assert (split.num_steps, split.nfe_per_step, split.rounds) == (STEPS, STEP_LENGTH, 1)
    np.testing.assert_array_equal(run_stats.nfe, 2 * split.nfe_bound)          # two queries, no EOS: exact
    np.testing.assert_array_equal(run_stats.verifier_calls, 2 * 16 * STEPS)
    np.testing.assert_array_equal(run_stats.nonfinite, 0)


@functools.cache
def _dvts():
    return _runs(its.tokens.dvts(MODEL.logits_fn, PRM, nfe_budget=BUDGET, num_steps=STEPS,
                                 step_length=STEP_LENGTH, subtree_width=4))


def test_dvts_spends_the_planned_budget_and_keeps_one_node_per_subtree():
    out, run_stats = _dvts()
    _check_budget(out, run_stats, groups=4, group_width=4)
    live = (np.asarray(out.scores) > -np.inf).reshape(SEEDS, 2, 4, 4)
    np.testing.assert_array_equal(live.sum(-1), 1)       # one node per subtree, in the slot it grew in
    assert np.all(np.asarray(out.best_score) == np.max(np.asarray(out.scores), axis=-1))


def test_dvts_subtrees_concentrate_on_correct_completions():
    out, _ = _dvts()
    kept = _correct(out.candidates)[np.asarray(out.scores) > -np.inf].reshape(SEEDS, 2, 4)
    for query in range(2):
        fraction = kept[:, query].mean(1)
        assert stats.ttest_1samp(fraction, Z[query], alternative="greater").pvalue < 1e-6
    best = _correct(out.best)
    assert best.mean() > 0.9


def test_sampled_beam_search_spends_the_planned_budget_and_concentrates():
    out, run_stats = _runs(its.tokens.beam_search(MODEL.logits_fn, PRM, nfe_budget=BUDGET, num_steps=STEPS,
                                                  step_length=STEP_LENGTH, expansions=4))
    _check_budget(out, run_stats, groups=4, group_width=4)
    live = np.asarray(out.scores) > -np.inf
    np.testing.assert_array_equal(live.sum(-1), 4)                              # the top 4 beams are kept
    fraction = (_correct(out.candidates) & live).sum(-1) / 4
    for query in range(2):
        assert stats.ttest_1samp(fraction[:, query], Z[query], alternative="greater").pvalue < 1e-6


def test_selection_rules_against_direct_references():
    inf = np.inf
    scores = jnp.array([[[0.3, -inf, 0.9, 0.9, 0.1, 0.5]]])
    live = scores > -inf
    done = jnp.array([[[False, False, True, False, False, False]]])
    none = jnp.full((1, 1, 3), -inf)

    @jax.jit
    def rules(temperatures):
        grouped = scores.reshape(1, 2, 3)
        return (keep_top_beams(3, 2)(scores, live, done, None), keep_top_beams(8, 2)(scores, live, done, None),
                keep_best_child(grouped, grouped > -inf, done.reshape(1, 2, 3), None),
                keep_best_child(none, none > -inf, none > 0, None),
                [balance_children(scores, live, done, RebaseParams(None, t)) for t in temperatures],
                balance_children(none, none > -inf, none > 0, RebaseParams(None, 1.0)))

    top_3, top_8, best_child, best_of_none, balanced, balanced_none = rules((0.1, 1.0))
    # top 3 beams, 2 children each; the finished one keeps 1; ties to the lowest slot
    np.testing.assert_array_equal(top_3, [[[0, 0, 1, 2, 0, 2]]])
    np.testing.assert_array_equal(top_8, [[[2, 0, 1, 2, 2, 2]]])
    np.testing.assert_array_equal(best_child, [[[0, 0, 1], [3, 0, 0]]])
    np.testing.assert_array_equal(best_of_none, 0)
    # REBASE: completed nodes keep one slot, the open ones share the rest by softmax(r / T)
    # (largest remainder)
    open_ = np.asarray(live & ~done)[0, 0]
    for temperature, counts in zip((0.1, 1.0), balanced):
        counts = np.asarray(counts)[0, 0]
        weights = np.where(open_, np.exp(np.asarray(scores)[0, 0] / temperature), 0.0)
        quota = 5 * weights / weights.sum()
        assert counts[2] == 1 and counts[1] == 0 and counts.sum() == 6
        assert np.all(np.abs(counts[open_] - quota[open_]) < 1)
    np.testing.assert_array_equal(balanced_none, 0)
