import jax.numpy as jnp
import pytest

from itscale import scaling


def test_xla_counts_a_matmul_as_two_m_n_k():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 32))
    assert scaling.flops_per_call(jnp.matmul, a, b) == pytest.approx(2 * 8 * 16 * 32, rel=0.05)
    assert scaling.flops_per_evaluation(lambda x: x @ b, a) == pytest.approx(2 * 16 * 32, rel=0.05)


def test_compute_matched_multiplier_equalises_total_flops():
    n, m, d_pre, d_inf = 1e8, 14.0, 1e11, 1e9
    k = scaling.matched_inference_multiplier(m, d_pre, d_inf)
    small = scaling.pretraining_flops(n, d_pre) + scaling.inference_flops(n, k * d_inf)
    large = scaling.pretraining_flops(m * n, d_pre) + scaling.inference_flops(m * n, d_inf)
    assert small == pytest.approx(large, rel=1e-12)
    assert scaling.matched_inference_multiplier(1.0, d_pre, d_inf) == 1.0
    with pytest.raises(ValueError, match="size_ratio"):
        scaling.matched_inference_multiplier(0.5, d_pre, d_inf)
