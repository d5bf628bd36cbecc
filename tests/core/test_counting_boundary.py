"""The counting boundary refuses to run blind: without JAX's trace context it raises, never counts unchecked."""

import jax
import jax.numpy as jnp
import pytest

import itscale as its
from itscale.core import counting


def test_missing_jax_trace_context_is_an_error_not_a_disabled_check(monkeypatch):
    monkeypatch.setattr(counting, "_jax_core", object())          # a JAX without the trace context
    model = its.counted(lambda x: x)
    with pytest.raises(RuntimeError, match="trace context"):
        with counting.ledger():
            model(jnp.ones((2, 3)))


def test_a_counted_call_under_a_raw_vmap_is_still_refused():
    model = its.counted(lambda x: 2 * x)
    with counting.ledger(), pytest.raises(RuntimeError, match="itscale.core.vmap"):
        jax.vmap(model)(jnp.ones((4, 3)))
