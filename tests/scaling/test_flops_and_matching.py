import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


def test_fit_power_law_recovers_known_exponents_from_synthetic_data():
    compute = np.geomspace(10, 1e5, 12)
    exact = scaling.fit_power_law(compute, 3.0 * compute ** -0.7)
    assert (exact.a, exact.b) == (pytest.approx(3.0, rel=1e-9), pytest.approx(0.7, rel=1e-9))
    noise = np.exp(0.02 * np.random.default_rng(0).standard_normal(compute.size))
    noisy = scaling.fit_power_law(compute, 3.0 * compute ** -0.7 * noise)
    assert noisy.b == pytest.approx(0.7, abs=0.02)
    floored = scaling.fit_power_law(compute, 2.0 * compute ** -1.2 + 0.05, offset=True)
    assert (floored.b, floored.c) == (pytest.approx(1.2, rel=1e-3), pytest.approx(0.05, rel=1e-3))
    with_nan = scaling.fit_power_law(np.append(compute, 7.0), np.append(3.0 * compute ** -0.7, np.nan))
    assert with_nan.b == pytest.approx(0.7, rel=1e-9)                  # non-finite points are ignored


def test_xla_flops_of_a_transformer_block_match_a_hand_count():
    from itscale.models.masked_transformer import _Block

    batch, length, width = 2, 16, 128
    block = _Block(width, num_heads=4, rngs=nnx.Rngs(0))
    x = jnp.ones((batch, length, width))
    graphdef, state = nnx.split(block)
    measured = scaling.flops_per_call(lambda s, v: nnx.merge(graphdef, s)(v), state, x)
    # projections 2·B·L·W·(3W + W), MLP 2·B·L·W·4W·2, scores and weighted sum 2·(2·B·L·L·W)
    matmuls = 2 * batch * length * width * (4 * width + 8 * width) + 4 * batch * length * length * width
    assert measured == pytest.approx(matmuls, rel=0.05)         # the rest: norms, softmax, GELU
