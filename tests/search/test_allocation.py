"""apportion (largest remainder) and offspring_slots: exact totals, quotas within one, −inf weights get
nothing, all −inf gives nothing (no NaN), slots laid out contiguously in parent order."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import itscale as its

K = 8
weights = st.lists(st.one_of(st.floats(-5.0, 5.0), st.just(-np.inf)), min_size=K, max_size=K)


def _hamilton(log_weights, total):
    """Reference: floor of the quotas, then +1 to the largest remainders (ties: lowest index)."""
    w = np.exp(np.asarray(log_weights) - np.max(log_weights))
    quota = total * w / w.sum()
    counts = np.floor(quota).astype(int)
    for i in sorted(range(len(w)), key=lambda i: (-(quota[i] - counts[i]) if w[i] > 0 else 2.0, i))[
            :total - counts.sum()]:
        counts[i] += 1
    return counts


@settings(max_examples=60, deadline=None)
@given(weights, st.integers(0, 3 * K))
def test_apportion_is_the_largest_remainder_rounding(log_weights, total):
    counts = np.asarray(its.search.apportion(jnp.asarray(log_weights), total))
    finite = np.isfinite(log_weights)
    if not finite.any():
        np.testing.assert_array_equal(counts, 0)
        return
    assert counts.sum() == total and np.all(counts[~finite] == 0)
    w = np.exp(np.asarray(log_weights) - np.max(log_weights))
    quota = total * w / w.sum()
    assert np.all(np.abs(counts - quota) < 1 + 1e-9)
    remainders = np.sort((quota - np.floor(quota))[finite])
    clear = np.all(np.diff(remainders) > 1e-6)        # no near-tie that float32 rounding may break
    if np.ptp(np.asarray(log_weights)[finite]) < 4.0 and clear:   # compare with the reference
        np.testing.assert_array_equal(counts, _hamilton(log_weights, total))


def test_apportion_batches_with_traced_totals():
    log_weights = jnp.log(jnp.array([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]]))
    counts = its.search.apportion(log_weights, jnp.array([7, 2]))
    np.testing.assert_array_equal(counts, [[4, 2, 1, 0], [1, 1, 0, 0]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=K, max_size=K))
def test_offspring_slots_lay_children_out_in_parent_order(counts):
    counts = np.asarray(counts)
    while counts.sum() > K:
        counts[np.argmax(counts)] -= 1
    slots = its.search.offspring_slots(jnp.asarray(counts))
    parent, rank, used = (np.asarray(a) for a in slots)
    expected = np.repeat(np.arange(K), counts)
    np.testing.assert_array_equal(used, np.arange(K) < counts.sum())
    np.testing.assert_array_equal(parent[used], expected)
    np.testing.assert_array_equal(rank[used], np.concatenate([np.arange(c) for c in counts]).astype(int))
    np.testing.assert_array_equal(parent[~used], np.arange(K)[~used])     # unused slots keep their row
