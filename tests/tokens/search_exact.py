"""Exact ground truth for the LM search tests: the event "the completion contains token a" under a
MarkovLM, its probability, and the exact twist / process reward P(event | prefix) on partial sequences."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def no_hit_table(model, token: int, length: int) -> np.ndarray:
    """q[m, u] = P(none of the next m tokens is ``token`` | last token u), m = 0..length."""
    avoid = np.exp(np.asarray(model.log_transition, float))
    avoid[:, token] = 0.0
    table = [np.ones(model.vocab_size)]
    for _ in range(length):
        table.append(avoid @ table[-1])
    return np.stack(table)


def completion_contains(generation, token: int):
    """(rows,) bool: the completion (new tokens up to the length) contains ``token``."""
    columns = jnp.arange(generation.tokens.shape[1])
    inside = (columns >= generation.prompt_lengths[:, None]) & (columns < generation.lengths[:, None])
    return jnp.any(inside & (generation.tokens == token), axis=1)


def contains_probability(model, token: int, length: int):
    """process_reward(generation) = P(the completion of ``length`` new tokens contains ``token`` | prefix),
    exact (the optimal twist; 1 or 0 once the sequence is complete)."""
    table = jnp.asarray(no_hit_table(model, token, length))

    def process_reward(generation):
        generated = generation.lengths - generation.prompt_lengths
        last = jnp.take_along_axis(generation.tokens, (generation.lengths - 1)[:, None], axis=1)[:, 0]
        miss = table[jnp.clip(length - generated, 0, length), last]
        return jnp.where(completion_contains(generation, token), 1.0, 1.0 - miss)

    return process_reward


def exact_contains_probability(model, prompt_last: int, token: int, length: int) -> float:
    """P(a completion of ``length`` tokens after a prompt ending in ``prompt_last`` contains ``token``)."""
    return float(1.0 - no_hit_table(model, token, length)[length, prompt_last])


def rare_token_model(token: int = 3, vocab_size: int = 4, seed: int = 3):
    """A MarkovLM under which ``token`` is rare (its logits lowered by 2): P(it appears in 5 tokens
    after token 1) = 0.161."""
    import itscale as its

    logits = np.random.default_rng(seed).normal(size=(vocab_size, vocab_size))
    logits[:, token] -= 2.0
    return its.models.MarkovLM(np.zeros(vocab_size), logits)
