import jax
import jax.numpy as jnp
import pytest

from itscale import scaling


def test_xla_counts_a_matmul_as_two_m_n_k():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 32))
    assert scaling.flops_per_call(jnp.matmul, a, b) == pytest.approx(2 * 8 * 16 * 32, rel=0.05)
    assert scaling.flops_per_evaluation(lambda x: x @ b, a) == pytest.approx(2 * 16 * 32, rel=0.05)


def test_flops_of_a_lowered_loop_counts_its_body_once_compiled_or_not():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 16))
    one = jax.jit(lambda x: x @ b).lower(a)
    looped = jax.jit(lambda x: jax.lax.fori_loop(0, 5, lambda i, y: y @ b, x)).lower(a)
    for compiled in (True, False):
        assert scaling.flops_of(one, compiled=compiled) == pytest.approx(2 * 8 * 16 * 16, rel=0.05)
        assert scaling.flops_of(looped, compiled=compiled) < 2 * scaling.flops_of(one, compiled=compiled)


def test_compute_matched_multiplier_equalises_total_flops():
    n, m, d_pre, d_inf = 1e8, 14.0, 1e11, 1e9
    k = scaling.matched_inference_multiplier(m, d_pre, d_inf)
    small = scaling.pretraining_flops(n, d_pre) + scaling.inference_flops(n, k * d_inf)
    large = scaling.pretraining_flops(m * n, d_pre) + scaling.inference_flops(m * n, d_inf)
    assert small == pytest.approx(large, rel=1e-12)
    assert scaling.matched_inference_multiplier(1.0, d_pre, d_inf) == 1.0
    with pytest.raises(ValueError, match="size_ratio"):
        scaling.matched_inference_multiplier(0.5, d_pre, d_inf)
