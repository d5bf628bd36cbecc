"""its.models.from_penzai: a tiny random Llama-like penzai TransformerLM decoded by itscale's token samplers.

Greedy rollout = greedy decoding with penzai's own KV-cache sampling mode (penzai 0.2's
``temperature_sample_pyloop`` divides by the temperature, so it has no temperature-0 mode: the reference
feeds argmax tokens to ``KVCachingTransformerLM`` itself); log-probabilities = the uncached penzai forward on
the generated sequence; ragged (left-padded) prompts and Jacobi's row-by-row rewinds match per-row
references; beam search and token SMC run with their declared NFE; two initialisations of one config
share apply_fn, init_cache and the weight structure."""

import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import itscale as its
from itscale.models import penzai_adapter

pz = pytest.importorskip("penzai.pz")
from penzai.models.transformer import sampling_mode  # noqa: E402
from penzai.models.transformer.variants import llamalike_common  # noqa: E402

V, NEW = 50, 10
PROMPTS = jnp.array([[3, 14, 15, 9, 2], [6, 5, 35, 8, 9], [7, 9, 3, 2, 38]], jnp.int32)


def build_lm(seed: int, **options):
    config = llamalike_common.LlamalikeTransformerConfig(
        num_kv_heads=2, query_head_multiplier=1, embedding_dim=32, projection_dim=16, mlp_hidden_dim=64,
        num_decoder_blocks=2, vocab_size=V, tie_embedder_and_logits=False,
        **{"mlp_variant": "swiglu", **options})
    return llamalike_common.build_llamalike_transformer(config, init_base_rng=jax.random.key(seed))


LM = build_lm(0)
MODEL = its.models.from_penzai(LM, max_len=32)


def full_logits(lm, tokens):
    """penzai's uncached forward from position 0: (batch, L, V)."""
    return lm(pz.nx.wrap(jnp.asarray(tokens), "batch", "seq")).unwrap("batch", "seq", "vocabulary")


def picked_log_probs(logits, tokens, first):
    """log softmax(logits)[t - 1, tokens[t]] for t >= first: log-probability of each token from ``first``."""
    log_p = jax.nn.log_softmax(np.asarray(logits, np.float64)[..., first - 1:-1, :], axis=-1)
    return np.take_along_axis(log_p, np.asarray(tokens)[..., first:, None], axis=-1)[..., 0]


@pytest.fixture(scope="module")
def greedy():
    return its.run(its.tokens.rollout(MODEL, temperature=0.0), jax.random.key(0), PROMPTS, num_steps=NEW)


def penzai_greedy_decoding(lm, prompts, new_tokens):
    """Greedy decoding with penzai's own KV-cache sampling mode (``KVCachingTransformerLM``, one scalar cache
    index): prefill, then feed each argmax token; each call jitted with ``pz.variable_jit``."""
    with jax.enable_x64(False):         # penzai's cache indices mix int32 and the default int under x64
        return _penzai_greedy_decoding(lm, prompts, new_tokens)


def _penzai_greedy_decoding(lm, prompts, new_tokens):
    cached = sampling_mode.KVCachingTransformerLM.from_uncached(
        lm, cache_len=prompts.shape[1] + new_tokens, batch_axes={"batch": prompts.shape[0]},
        pad_id=-1)                                                      # no token id is taken for padding
    feed = pz.variable_jit(lambda model, tokens: model(pz.nx.wrap(tokens, "batch", "seq"))
                           .unwrap("batch", "seq", "vocabulary")[:, -1])
    tokens = [jnp.argmax(feed(cached, prompts), axis=-1)]
    for _ in range(new_tokens - 1):
        tokens.append(jnp.argmax(feed(cached, tokens[-1][:, None]), axis=-1))
    return jnp.stack(tokens, axis=1)


def test_greedy_rollout_equals_penzai_kv_cache_greedy_decoding(greedy):
    out = greedy.output
    assert out.tokens.shape == (3, 5 + NEW) and out.log_probs.shape == (3, NEW)
    assert int(greedy.stats.nfe) == 3 * (5 + NEW) and int(greedy.stats.nonfinite) == 0
    np.testing.assert_array_equal(out.tokens[:, :5], PROMPTS)
    # no near-ties: the greedy choice is well defined at float32 rounding
    logits = np.sort(np.asarray(full_logits(LM, out.tokens))[:, 4:-1], axis=-1)
    assert (logits[..., -1] - logits[..., -2]).min() > 1e-3
    reference = penzai_greedy_decoding(LM, PROMPTS, NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 5:]), np.asarray(reference))


def test_log_probs_equal_the_uncached_penzai_forward(greedy):
    out = greedy.output
    logits = full_logits(LM, out.tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs), picked_log_probs(logits, out.tokens, 5), atol=2e-5)
    # greedy: each new token is the argmax of the uncached forward, so the whole context is used
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 5:]),
                                  np.argmax(np.asarray(logits[:, 4:-1]), axis=-1))
    # and the context matters: the same last prompt token after another prefix gives other logits
    other = full_logits(LM, out.tokens.at[:, 0].set(1))
    assert np.abs(np.asarray(other[:, 4:]) - np.asarray(logits[:, 4:])).max() > 1e-3


def test_ragged_prompts_through_jacobi_rewinds_match_per_row_references():
    """Left padding (per-row ``start``) and row-by-row rewinds: greedy Jacobi decoding (bit-identical to the
    greedy rollout) of right-padded prompts of 5, 2 and 3 tokens = each row decoded alone without cache."""
    lengths = jnp.array([5, 2, 3], jnp.int32)
    prompts = jnp.where(jnp.arange(5) < lengths[:, None], PROMPTS, 0)
    steps = 6
    sampler = its.tokens.jacobi(MODEL, temperature=0.0, block=3)
    result = its.run(sampler, jax.random.key(0), (prompts, lengths), num_steps=steps)
    out = result.output
    assert int(result.stats.nonfinite) == 0 and out.tokens.shape == (3, 5 + steps)
    np.testing.assert_array_equal(np.asarray(out.prompt_lengths), np.asarray(lengths))
    for b, n in enumerate(np.asarray(lengths)):
        row = np.asarray(out.tokens[b, :n + steps])                     # the output is right-padded
        np.testing.assert_array_equal(row[:n], np.asarray(PROMPTS[b, :n]))
        logits = np.asarray(full_logits(LM, row[None]))[0]
        np.testing.assert_array_equal(row[n:], np.argmax(logits[n - 1:-1], axis=-1))
        np.testing.assert_allclose(np.asarray(out.log_probs[b]), picked_log_probs(logits, row, n), atol=2e-5)


def test_beam_search_and_token_smc_run_with_their_nfe():
    prompts, steps = PROMPTS[:2], 4
    log_prob = lambda generation: generation.log_probs.sum(-1)  # noqa: E731
    beams, expansions = 2, 3
    budget = 5 + beams * expansions * steps
    beam = its.run(its.tokens.beam_search(MODEL, log_prob, nfe_budget=budget, num_steps=steps, step_length=1,
                                          expansions=expansions, expansion="top_k"),
                   jax.random.key(2), prompts, num_steps=steps)
    assert int(beam.stats.nfe) == 2 * budget and int(beam.stats.nonfinite) == 0
    assert int(beam.output.split.width) == beams * expansions
    best = beam.output.best
    assert np.all(np.isfinite(np.asarray(beam.output.best_score)))
    # the best beam's score is its log-probability under the uncached penzai forward
    exact = picked_log_probs(full_logits(LM, best.tokens), best.tokens, 5).sum(-1)
    np.testing.assert_allclose(np.asarray(beam.output.best_score), exact, atol=1e-4)

    particles = 4
    twist = lambda generation: -0.1 * (generation.tokens[:, 5:] % 7).sum(-1)  # noqa: E731
    budget = 5 + particles * steps
    smc = its.run(its.tokens.token_smc(MODEL, twist, nfe_budget=budget, num_steps=steps, step_length=1,
                                       ess_threshold=1.0),
                  jax.random.key(3), prompts, num_steps=steps)
    assert int(smc.stats.nfe) == 2 * budget and int(smc.stats.verifier_calls) == 2 * particles * steps
    assert int(smc.stats.nonfinite) == 0 and int(smc.output.split.width) == particles
    assert np.all(np.isfinite(np.asarray(smc.output.log_normalizer)))
    assert smc.output.particles.tokens.shape == (2, particles, 5 + steps)


def test_two_initialisations_share_apply_fn_weight_structure_and_compiled_loop(greedy, monkeypatch):
    other = its.models.from_penzai(build_lm(1), max_len=32)
    assert other.apply_fn == MODEL.apply_fn and hash(other.apply_fn) == hash(MODEL.apply_fn)
    assert other.init_cache == MODEL.init_cache and other.vocab_size == MODEL.vocab_size == V
    assert jax.tree.structure(other.weights) == jax.tree.structure(MODEL.weights)
    assert jax.tree.structure(other) == jax.tree.structure(MODEL)
    assert all(isinstance(w, jax.Array) for w in jax.tree.leaves(MODEL.weights))
    pairs = zip(jax.tree.leaves(other.weights), jax.tree.leaves(MODEL.weights))
    assert any(not np.array_equal(a, b) for a, b in pairs)
    # the weights are traced arguments: the greedy rollout compiled for MODEL runs the new weights untraced
    traces = []
    forward = penzai_adapter.PenzaiForward.__call__
    monkeypatch.setattr(penzai_adapter.PenzaiForward, "__call__",
                        lambda self, *args: traces.append(1) or forward(self, *args))
    result = its.run(its.tokens.rollout(other, temperature=0.0), jax.random.key(0), PROMPTS, num_steps=NEW)
    assert not traces
    assert not np.array_equal(np.asarray(result.output.tokens), np.asarray(greedy.output.tokens))
    # a model whose parameters were frozen (pz.freeze_params) is the same model with the same weights
    frozen = its.models.from_penzai(pz.freeze_params(LM), max_len=32)
    assert frozen.apply_fn == MODEL.apply_fn
    pairs = zip(jax.tree.leaves(frozen.weights), jax.tree.leaves(MODEL.weights))
    assert all(np.array_equal(a, b) for a, b in pairs)
    # another architecture is another model
    geglu = its.models.from_penzai(build_lm(0, mlp_variant="geglu_approx"), max_len=32)
    assert geglu.apply_fn != MODEL.apply_fn


def test_errors_and_lazy_import():
    with pytest.raises(TypeError, match="sampling mode"):
        cached = sampling_mode.KVCachingTransformerLM.from_uncached(LM, 8, {"batch": 1})
        its.models.from_penzai(cached, max_len=8)
    with pytest.raises(TypeError, match="TransformerLM"):
        its.models.from_penzai(LM.body, max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        its.models.from_penzai(LM, max_len=0)
    with pytest.raises(TypeError, match="PenzaiCache"):
        MODEL(PROMPTS, None)
    # importing itscale never imports penzai: the adapter module imports it inside functions only
    tree = ast.parse(inspect.getsource(penzai_adapter))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not any(name and name.split(".")[0] == "penzai" for name in names)
