"""jacobi: same tokens and log-probabilities as rollout bit for bit (greedy and sampling, blocks, EOS,
cached n-gram with per-row prompts), at most n iterations, exact NFE, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its

jax.config.update("jax_enable_x64", True)

V, N, P, BATCH = 5, 6, 3, 64
RNG = np.random.default_rng(0)
MODEL = its.models.MarkovLM(RNG.normal(size=V), 1.5 * RNG.normal(size=(V, V)))
PROMPTS = jnp.asarray(RNG.integers(0, V, size=(BATCH, P)))
SETTINGS = [{"temperature": 1.0, "top_p": 1.0}, {"temperature": 0.7, "top_p": 0.8},
            {"temperature": 0.0, "top_p": 1.0}]
CONTROLS = {"top_p": 1.0, "max_new_tokens": N}
ROLLOUTS = {eos_id: its.tokens.rollout(MODEL.logits_fn, eos_id=eos_id, **CONTROLS) for eos_id in (None, 4)}


def assert_same_generation(parallel, sequential):
    """The same tokens bit for bit; their log-probabilities, computed by differently shaped programs, to
    float64 rounding."""
    for field in ("tokens", "lengths", "prompt_lengths", "finished"):
        np.testing.assert_array_equal(np.asarray(getattr(parallel, field)),
                                      np.asarray(getattr(sequential, field)), err_msg=field)
    for field in ("log_probs", "sample_log_probs"):
        np.testing.assert_allclose(np.asarray(getattr(parallel, field)), np.asarray(getattr(sequential, field)),
                                   rtol=1e-12, err_msg=field)


@pytest.mark.parametrize("block, eos_id", [(None, None), (4, 4)])
def test_jacobi_equals_rollout_token_for_token_within_n_iterations(block, eos_id):
    sampler = its.tokens.jacobi(MODEL.logits_fn, block=block, eos_id=eos_id, **CONTROLS)
    reference = ROLLOUTS[eos_id]
    width = N if block is None else block
    assert sampler.nfe_per_step == block          # None: the block is the run's max_new_tokens
    for i, params in enumerate(SETTINGS):
        key = jax.random.key(i)
        parallel = its.run(sampler, key, PROMPTS, num_steps=N, params=params)
        sequential = its.run(reference, key, PROMPTS, num_steps=N, params=params).output
        assert_same_generation(parallel.output, sequential)
        iterations = np.asarray(parallel.output.iterations)
        assert np.asarray(parallel.output.converged).all()
        assert (iterations <= N).all() and iterations.max() >= -(-N // width)
        assert int(parallel.stats.nfe) == BATCH * P + iterations.max() * BATCH * width
        if eos_id is not None:
            assert 0 < np.asarray(sequential.finished).mean() < 1


def test_cached_ngram_with_per_row_prompts_and_unconverged_iterations():
    rng = np.random.default_rng(1)
    trigram = its.models.NGramLM(rng.normal(size=(V, V)), 1.5 * rng.normal(size=(V, V, V)))
    lengths = jnp.asarray(rng.integers(1, P + 1, size=BATCH))
    x = (PROMPTS, lengths)
    kwargs = {"init_cache": trigram.init_cache, "max_new_tokens": N}
    sampler = its.tokens.jacobi(trigram.logits_fn, block=3, **kwargs)
    key = jax.random.key(7)
    result = its.run(sampler, key, x, num_steps=N, trace=lambda state: sampler.finalize(state))
    sequential = its.run(its.tokens.rollout(trigram.logits_fn, **kwargs), key, x, num_steps=N).output
    assert_same_generation(result.output, sequential)
    assert (np.asarray(result.output.iterations) <= N).all()
    # after one iteration a block of 3 is rarely solved: unconverged rows hold only committed tokens
    first = jax.tree.map(lambda a: np.asarray(a[0]), result.trace.state)
    assert not first.converged.all()
    np.testing.assert_array_equal(first.iterations, 1)
    committed = first.lengths - first.prompt_lengths
    assert set(np.unique(committed)) <= {0, 3}
    full = np.asarray(sequential.tokens)
    for row in range(BATCH):
        end = int(first.lengths[row])
        np.testing.assert_array_equal(first.tokens[row, :end], full[row, :end])
        assert (first.tokens[row, end:] == 0).all()


def test_a_cache_that_cannot_rewind_is_rejected():
    def logits_fn(tokens, cache):
        return MODEL.log_transition[tokens], cache

    sampler = its.tokens.jacobi(logits_fn, max_new_tokens=2, init_cache=lambda b, n, start: {"seen": start})
    with pytest.raises(TypeError, match="cannot rewind"):
        its.run(sampler, jax.random.key(0), PROMPTS[:2], num_steps=2)
    with pytest.raises(ValueError, match="block"):
        its.tokens.jacobi(logits_fn, max_new_tokens=2, block=0)
