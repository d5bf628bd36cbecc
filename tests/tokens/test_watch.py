"""Every token sampler's non-finite check reads its sequences and logits, never its KV cache: a model
that writes NaN into its cache but never into its logits runs clean under each of them (a sampler
whose ``watch`` forgot the cache would report faults, and re-read the whole cache after every step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its

V = 4
LOG_TRANSITION = jnp.log(jnp.array([[0.50, 0.25, 0.15, 0.10],
                                    [0.10, 0.45, 0.30, 0.15],
                                    [0.30, 0.10, 0.35, 0.25],
                                    [0.20, 0.30, 0.20, 0.30]]))
PROMPTS = jnp.array([[0, 2], [0, 1]])


def nan_cache(tokens, cache):
    """A first-order Markov LM whose cache, a (rows, 2) float array, is overwritten with NaN."""
    return LOG_TRANSITION[tokens], jnp.full_like(cache, jnp.nan)


def init_cache(batch, max_len, start):
    return jnp.zeros((batch, 2))


def rewind(cache, num_positions):
    return cache


def reward(generation):
    return jnp.mean((generation.tokens == 3).astype(jnp.float32), axis=1)


ROLLOUT = dict(init_cache=init_cache)
STEPS = dict(rewind=rewind, **ROLLOUT)                 # step-level samplers stop mid-loop
SEARCH = dict(nfe_budget=2 + 4 * 4, num_steps=2, step_length=2, **STEPS)
SAMPLERS = {
    "rollout": (lambda fn: its.tokens.rollout(fn, max_new_tokens=4, **ROLLOUT), 4),
    "step_rollout": (lambda fn: its.tokens.step_rollout(fn, step_length=2, max_new_tokens=4, **STEPS), 2),
    "jacobi": (lambda fn: its.tokens.jacobi(fn, block=2, max_new_tokens=4, **STEPS), 4),
    "speculative": (lambda fn: its.tokens.speculative(fn, fn, gamma=2, max_new_tokens=4,
                                                      target_init_cache=init_cache, draft_init_cache=init_cache,
                                                      rewind=rewind), 4),
    "smc": (lambda fn: its.search.smc(its.tokens.rollout(fn, max_new_tokens=4, noise="step", **ROLLOUT),
                                      reward, num_particles=4), 4),
    "best_of_n": (lambda fn: its.search.best_of_n(its.tokens.rollout(fn, max_new_tokens=4, **ROLLOUT),
                                                  reward, num_candidates=4), 4),
    "token_smc": (lambda fn: its.tokens.token_smc(fn, reward, **SEARCH), 2),
    "beam_search": (lambda fn: its.tokens.beam_search(fn, reward, expansions=2, **SEARCH), 2),
    "dvts": (lambda fn: its.tokens.dvts(fn, reward, subtree_width=2, **SEARCH), 2),
    "rebase": (lambda fn: its.tokens.rebase(fn, reward, **SEARCH), 2),
    "particle_filter": (lambda fn: its.tokens.particle_filter(fn, lambda g: 0.5 + 0 * reward(g), **SEARCH), 2),
}


def nan_logits(tokens, cache):
    return jnp.full(tokens.shape + (V,), jnp.nan), cache


def run(name, logits_fn):
    build, num_steps = SAMPLERS[name]
    sampler = build(logits_fn)
    assert sampler.watch is not None
    prompts = jnp.repeat(PROMPTS[:1], 4, axis=0) if name == "smc" else PROMPTS     # smc: one query's particles
    return its.run(sampler, jax.random.key(0), prompts, num_steps=num_steps)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_nan_cache_alone_is_not_a_fault(name):
    result = run(name, nan_cache)
    assert int(result.stats.nonfinite) == 0, name
    assert np.all(np.asarray(jax.tree.leaves(result.output)[0]) >= 0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nan_logits_are_still_a_fault(name):
    """The watched part is not empty: NaN logits (what a NaN cache entry that is read produces) are seen."""
    assert int(run(name, nan_logits).stats.nonfinite) > 0, name
