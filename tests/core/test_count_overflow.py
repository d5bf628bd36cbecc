"""NFE counts are exact or flagged: never a wrapped int32."""

import jax
import jax.numpy as jnp
import pytest

import itscale as its

BATCH, STEPS = 10_000_000, 215           # 2.15e9 evaluations: past int32


def _expensive() -> its.Sampler:
    """A tiny state whose model call is charged ``BATCH`` evaluations, as a batch of 10^7 would be."""
    model = its.counted(lambda x, t: x, cost=lambda x, t: BATCH)
    return its.Sampler(lambda key, x, params: x, lambda key, x, ctx, params: (model(x, 0.0), {}), lambda x: x)


def test_without_x64_a_count_past_int32_is_flagged_not_wrapped():
    with jax.enable_x64(False):
        stats = its.run(_expensive(), jax.random.key(0), jnp.zeros((1, 2)), num_steps=STEPS).stats
    assert bool(stats.count_overflow) and int(stats.nfe) == -1
    assert float(stats.nfe_per_sample) == pytest.approx(BATCH * STEPS, rel=1e-6)


def test_counts_below_int32_are_exact_and_unflagged():
    with jax.enable_x64(False):
        stats = its.run(_expensive(), jax.random.key(0), jnp.zeros((1, 2)), num_steps=214).stats
    assert not bool(stats.count_overflow) and int(stats.nfe) == BATCH * 214


def test_with_x64_the_count_is_exact_int64():
    with jax.enable_x64(True):
        stats = its.run(_expensive(), jax.random.key(0), jnp.zeros((1, 2)), num_steps=STEPS).stats
    assert stats.nfe.dtype == jnp.int64 and int(stats.nfe) == BATCH * STEPS and not bool(stats.count_overflow)


def test_a_single_call_beyond_the_counter_is_an_error_not_a_wrap():
    model = its.counted(lambda x, t: x, cost=lambda x, t: 2 ** 31)
    sampler = its.Sampler(lambda key, x, params: x, lambda key, x, ctx, params: (model(x, 0.0), {}), lambda x: x)
    with jax.enable_x64(False), pytest.raises(OverflowError, match="jax_enable_x64"):
        its.run(sampler, jax.random.key(0), jnp.zeros((1, 2)), num_steps=1)
