"""Resampling in place: the same offspring counts, survivors kept in their slots, only dead slots written,
equal to a gather with the permuted ancestors, and no copy of a large carried state in a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itscale import search
from itscale.search import in_place
from tests.core.helpers import carried_copies

# A few sizes, so that the jitted functions compile once per size.
_ancestors = st.sampled_from([1, 5, 16, 33]).flatmap(
    lambda n: st.lists(st.integers(0, n - 1), min_size=n, max_size=n).map(lambda a: np.asarray(a, np.int32)))


_moves = jax.jit(in_place.in_place_moves)
_permuted = jax.jit(in_place.in_place_ancestors)
_order = jax.jit(in_place.in_place_order)
_resample = jax.jit(in_place.resample_in_place, static_argnames="chunk")


@settings(max_examples=60, deadline=None)
@given(_ancestors, st.booleans())
def test_in_place_ancestors_keep_counts_and_survivors_and_order_maps_the_slots_to_them(ancestors, presorted):
    ancestors = np.sort(ancestors) if presorted else ancestors
    n = len(ancestors)
    counts = np.bincount(ancestors, minlength=n)
    permuted = np.asarray(_permuted(jnp.asarray(ancestors)))
    np.testing.assert_array_equal(np.bincount(permuted, minlength=n), counts)
    survivors = counts > 0
    np.testing.assert_array_equal(permuted[survivors], np.arange(n)[survivors])
    order = np.asarray(_order(jnp.asarray(ancestors)))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    np.testing.assert_array_equal(ancestors[order], permuted)
    moves = _moves(jnp.asarray(ancestors))
    m = int(moves.num_moved)
    assert m == int(np.sum(~survivors))
    np.testing.assert_array_equal(np.asarray(moves.destinations)[:m], np.flatnonzero(~survivors))
    assert np.all(np.asarray(moves.destinations)[m:] == n) and np.all(np.asarray(moves.sources)[m:] == 0)


@settings(max_examples=30, deadline=None)
@given(_ancestors, st.sampled_from([1, 3, 16]))
def test_resample_in_place_equals_the_permuted_gather_also_in_two_calls(ancestors, chunk):
    n = len(ancestors)
    rng = np.random.default_rng(n)
    tree = {"large": jnp.asarray(rng.normal(size=(n, 2, in_place.IN_PLACE_MIN_ROW_BYTES // 8)), jnp.float32),
            "small": jnp.asarray(rng.integers(0, 100, size=(n, 3)), jnp.int32),
            "vector": jnp.arange(n, dtype=jnp.float32)}
    out = _resample(tree, jnp.asarray(ancestors), chunk=chunk)
    permuted = np.asarray(_permuted(jnp.asarray(ancestors)))
    for name, leaf in tree.items():
        np.testing.assert_array_equal(out[name], np.asarray(leaf)[permuted], err_msg=name)
    # In two calls -- the small leaves, then the large one with the ancestors read off the first --
    # the parts stay aligned: the permuted order is idempotent (token_smc relies on it).
    first = _resample({"index": jnp.arange(n), "small": tree["small"]}, jnp.asarray(ancestors), chunk=chunk)
    np.testing.assert_array_equal(first["small"], np.asarray(tree["small"])[permuted])
    second = _resample(tree["large"], first["index"], chunk=chunk)
    np.testing.assert_array_equal(second, np.asarray(tree["large"])[np.asarray(first["index"])])


@pytest.mark.parametrize("data", [("large", "small"), ("large",), ("small",)])
def test_key_leaves_stay_in_their_slots_while_the_other_leaves_move(data):
    """Random streams belong to slots: typed PRNG key leaves are neither moved (the in-place loop over
    large rows) nor gathered (small rows), so a copy written into a dead slot draws from that slot's
    stream, not its parent's."""
    ancestors = jnp.array([0, 0, 0, 3, 3, 5, 5], jnp.int32)           # slots 1, 2, 4 and 6 die
    n = ancestors.shape[0]
    rng = np.random.default_rng(0)
    rows = {"large": jnp.asarray(rng.normal(size=(n, in_place.IN_PLACE_MIN_ROW_BYTES // 4)), jnp.float32),
            "small": jnp.asarray(rng.integers(0, 100, size=(n, 3)), jnp.int32)}
    keys = {"keys": jax.random.split(jax.random.key(0), n),
            "key_rows": jax.random.split(jax.random.key(1), (n, 2))}
    tree = {**{name: rows[name] for name in data}, **keys}
    for chunk in (1, 16):
        out = _resample(tree, ancestors, chunk=chunk)
        permuted = np.asarray(_permuted(ancestors))
        for name in data:
            np.testing.assert_array_equal(out[name], np.asarray(tree[name])[permuted], err_msg=name)
        for name, leaf in keys.items():
            assert out[name].dtype == leaf.dtype
            np.testing.assert_array_equal(jax.random.key_data(out[name]), jax.random.key_data(leaf),
                                          err_msg=name)


def test_blocks_of_per_query_ancestors_stay_in_their_block():
    """Ancestors of block q (slots q·W .. (q+1)·W − 1) inside block q: the permuted ones stay there."""
    width, blocks = 6, 5
    rng = np.random.default_rng(0)
    local = rng.choice(width, size=(blocks, width), p=[0.5, 0.3, 0.1, 0.1, 0.0, 0.0])
    ancestors = (local + width * np.arange(blocks)[:, None]).reshape(-1)
    permuted = np.asarray(in_place.in_place_ancestors(jnp.asarray(ancestors))).reshape(blocks, width)
    assert np.all(permuted // width == np.arange(blocks)[:, None])


def test_no_resampling_event_writes_nothing_and_a_large_state_is_not_copied_in_a_loop():
    """Uniform weights under systematic resampling give one offspring each: the state comes back
    unchanged. In a scan that resamples every step, the compiled loop holds no copy of the large
    state (a gather would write a new buffer and copy it back into the loop carry)."""
    n, row = 64, in_place.IN_PLACE_MIN_ROW_BYTES // 4
    state = jnp.arange(n * row, dtype=jnp.float32).reshape(n, row)
    same = search.systematic(jax.random.key(0), jnp.zeros(n))
    assert int(in_place.in_place_moves(same).num_moved) == 0
    np.testing.assert_array_equal(in_place.resample_in_place(state, same), state)

    def loop(resample, state, key):
        def body(state, k):
            state = state.at[:, 0].add(1.0)
            return resample(state, search.systematic(k, state[:, 1] * 1e-3)), None
        return jax.lax.scan(body, state, jax.random.split(key, 5))[0]

    def copies(resample):
        return carried_copies(loop, resample, state, jax.random.key(1))

    assert copies(lambda state, ancestors: state[ancestors]) != []     # the gather's copy into the carry
    assert copies(in_place.resample_in_place) == []
    out = jax.jit(loop, static_argnums=0)(in_place.resample_in_place, state, jax.random.key(1))
    assert np.all(np.isin(np.asarray(out[:, 1]), np.asarray(state[:, 1])))   # whole rows of the state


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="ancestors must be a 1-D integer"):
        in_place.in_place_moves(jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="ancestors must be a 1-D integer"):
        in_place.in_place_moves(jnp.zeros(3))
    with pytest.raises(ValueError, match="particle axis of size 3"):
        in_place.resample_in_place({"x": jnp.zeros((4, 2))}, jnp.arange(3))
    with pytest.raises(ValueError, match="chunk"):
        in_place.resample_in_place(jnp.zeros((3, 2)), jnp.arange(3), chunk=0)
