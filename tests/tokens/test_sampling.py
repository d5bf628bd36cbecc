"""Decoding controls: exact truncated laws against a plain numpy reference, safety, Gumbel-max."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from itscale.tokens import sampling
from itscale.tokens.sampling import decoding, sampling_log_probs, truncated_log_probs

from ._exact import chi_square_pvalue, reference_law

jax.config.update("jax_enable_x64", True)

LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.25, 0.2]))


@jax.jit
def _law(logits, temperature, top_p, min_p):
    """All stages on, values traced (top_k fixed at 4): one compilation for the whole module."""
    dec = sampling.Decoding(top_k=4, top_p=True, min_p=True)
    return sampling_log_probs(logits, {"temperature": temperature, "top_p": top_p, "min_p": min_p}, dec)


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [
    (1.0, None, None, None), (0.5, None, None, None), (2.0, None, None, None),
    (1.0, 2, None, None), (1.0, 1, None, None),
    (1.0, None, 0.5, None), (1.0, None, 0.6, None), (1.0, None, 0.7, None),
    (1.0, None, 0.0, None), (1.0, None, 1.0, None), (1.0, None, None, 0.5), (1.0, None, None, 0.3),
    (0.7, 3, 0.8, None), (1.3, 4, 0.9, 0.2), (0.0, None, None, None), (0.0, 3, 0.5, 0.1),
])
def test_truncated_law_is_exact(temperature, top_k, top_p, min_p):
    got = np.exp(np.asarray(truncated_log_probs(LOGITS, temperature=temperature, top_k=top_k, top_p=top_p,
                                                min_p=min_p)))
    np.testing.assert_allclose(got, reference_law(LOGITS, temperature, top_k, top_p, min_p), atol=1e-12)


def test_truncation_zeroes_are_minus_inf_and_rows_are_independent():
    batch = np.stack([LOGITS, LOGITS[::-1], np.zeros(5)])
    got = np.asarray(truncated_log_probs(batch, top_k=2))
    for row, logits in zip(got, batch):
        law = reference_law(logits, top_k=2) if logits.std() else np.full(5, 1.0)
        kept = law > 0
        assert np.all(np.isneginf(row[~kept])) and np.all(np.isfinite(row[kept]))
    # ties at the threshold are kept: a flat row keeps all five tokens under top_k=2
    np.testing.assert_allclose(np.exp(got[2]), np.full(5, 0.2))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6), min_size=6, max_size=6, unique=True),
       st.floats(0.1, 3.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_traced_controls_match_reference(logits, temperature, top_p, min_p):
    logits = np.array(logits)
    assume(np.min(np.diff(np.sort(logits))) > 1e-3)   # no ties: the reference breaks them arbitrarily
    got = np.exp(np.asarray(_law(logits, temperature, top_p, min_p)))
    want = reference_law(logits, temperature, 4, top_p, min_p)
    # thresholds that fall within rounding of a boundary are ambiguous: compare only clear cases
    probs = reference_law(logits, temperature, 4)
    cumulative = np.cumsum(np.sort(probs)[::-1])
    if np.min(np.abs(cumulative - top_p)) > 1e-9 and np.min(np.abs(probs / probs.max() - min_p)) > 1e-9:
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert got.max() > 0 and abs(got.sum() - 1) < 1e-9


def test_unsafe_logits_never_give_nan():
    rows = np.array([[-np.inf] * 4, [np.nan, 0.0, 1.0, np.nan], [np.inf, 0.0, np.inf, -np.inf],
                     [0.0, 0.0, 0.0, 0.0]])
    for temperature in (0.0, 1.0):
        dec = sampling.Decoding(top_k=2, top_p=True, min_p=True)
        params = {"temperature": temperature, "top_p": 0.0, "min_p": 2.0}
        log_q = np.asarray(sampling_log_probs(rows, params, dec))
        assert not np.isnan(log_q).any()
        assert np.isneginf(log_q[0]).all()                       # impossible row stays impossible
        assert np.isfinite(log_q[1:]).sum(-1).min() >= 1       # never an empty truncation
        tokens = sampling.gumbel_max(jnp.asarray(log_q), jnp.zeros((4, 4)), pad_id=3)
        assert int(tokens[0]) == 3
        assert np.isfinite(log_q[np.arange(1, 4), np.asarray(tokens[1:])]).all()
    assert not np.isnan(np.asarray(sampling.model_log_probs(rows))).any()


def test_gumbel_max_samples_the_law():
    log_q = jnp.asarray(truncated_log_probs(LOGITS, top_p=0.8))
    gumbel = jax.random.gumbel(jax.random.key(0), (40_000, 5), jnp.float64)
    tokens = np.asarray(sampling.gumbel_max(jnp.broadcast_to(log_q, (40_000, 5)), gumbel, pad_id=0))
    counts = np.bincount(tokens, minlength=5)
    assert chi_square_pvalue(counts, np.exp(np.asarray(log_q))) > 1e-3
    assert chi_square_pvalue(counts, np.exp(LOGITS)) < 1e-3          # the untruncated law is rejected


def test_bad_controls_raise():
    with pytest.raises(ValueError, match="temperature"):
        decoding(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        decoding(top_p=1.5)
    with pytest.raises(ValueError, match="min_p"):
        decoding(min_p=-0.1)
    with pytest.raises(TypeError, match="top_k"):
        decoding(top_k=2.5)
    with pytest.raises(ValueError, match="top_k"):
        decoding(top_k=0)
    with pytest.raises(TypeError, match="eos_id"):
        decoding(eos_id="</s>")
    with pytest.raises(ValueError, match="pad_id"):
        decoding(pad_id=-1)
    with pytest.raises(ValueError, match="eos_id=9"):
        decoding(eos_id=9)[0].check_vocab(5)


def test_first_argmax_equals_argmax_with_ties_and_impossible_rows():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=(64, 17)).astype(np.float32)     # many ties
    x[::5] = -np.inf                                               # impossible rows
    x[1::7, 3] = np.inf
    np.testing.assert_array_equal(jax.jit(sampling.first_argmax)(x), np.argmax(x, axis=-1))
