"""Scaling-study models: parameter counts of the default configs (>= 10x apart, against the closed-form
counts), exact difficulty buckets, deterministic training of a tiny LM, the verifier's exact labels, and
(slow) every family trained, cached and reloaded."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import model_cache
from experiments import scaling_models as sm
from itscale.models import digits
from itscale.verifiers import arithmetic

TINY_LM = sm.ModelConfig(max_digits=2, min_digits=1, width=8, depth=1, num_heads=2, train_steps=12,
                         batch_size=8, warmup_steps=2)


def transformer_params(vocab, width, depth):
    """Embedding, per block 2 norms (4W) + qkv (3W^2 + 3W) + out (W^2 + W) + MLP (8W^2 + 5W),
    final norm, head."""
    return vocab * width + depth * (12 * width ** 2 + 13 * width) + 2 * width + width * vocab + vocab


def mlp_params(dim, time_features, width, depth):
    sizes = [dim + 2 * time_features] + [width] * depth + [dim]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_default_sizes_are_ten_times_apart():
    config, counts = sm.ScalingConfig(), sm.param_counts()
    v = arithmetic.VOCAB_SIZE
    for name in ("lm_small", "lm_large"):
        c = getattr(config, name)
        assert counts[name] == transformer_params(v, c.width, c.depth)
    for name in ("flow_small", "flow_large"):
        c = getattr(config, name)
        assert counts[name] == mlp_params(digits.DIM, c.time_features, c.width, c.depth)
    c = config.verifier
    assert counts["verifier"] == transformer_params(v, c.width, c.depth) + v + 1
    assert counts["lm_large"] >= 10 * counts["lm_small"]
    assert counts["flow_large"] >= 10 * counts["flow_small"]
    # the same recipe for both sizes: only the architecture differs
    keep = lambda c, *names: dataclasses.replace(c, **{n: 0 for n in names})  # noqa: E731
    assert config.lm_small._replace(width=0, depth=0, num_heads=0) == config.lm_large._replace(
        width=0, depth=0, num_heads=0)
    assert keep(config.flow_small, "width", "depth") == keep(config.flow_large, "width", "depth")
    assert config.verifier.lm == config.lm_small


def _reference_difficulty(a: int, b: int) -> tuple[int, int]:
    """Column addition on decimal strings."""
    n = max(len(str(a)), len(str(b)))
    sa, sb = str(a).zfill(n)[::-1], str(b).zfill(n)[::-1]
    carry = carries = 0
    for x, y in zip(sa, sb):
        carry = (int(x) + int(y) + carry) // 10
        carries += carry
    return n, carries


def test_difficulty_buckets_are_exact():
    cases = {(12, 39): (2, 1), (999, 1): (3, 3), (0, 0): (1, 0), (5, 7): (1, 1), (1234, 8): (4, 1),
             (4321, 5678): (4, 0), (99999999, 1): (8, 8), (50, 50): (2, 1), (10, 0): (2, 0), (95, 5): (2, 2)}
    a, b = np.array(list(cases)).T
    level = sm.difficulty(a, b)
    assert list(zip(level.digits.tolist(), level.carries.tolist())) == list(cases.values())
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10 ** rng.integers(1, 9, 500))
    b = rng.integers(0, 10 ** rng.integers(1, 9, 500))
    level = sm.difficulty(a, b)
    expected = np.array([_reference_difficulty(int(x), int(y)) for x, y in zip(a, b)])
    np.testing.assert_array_equal(np.column_stack(level), expected)
    with pytest.raises(ValueError, match="non-negative"):
        sm.difficulty([-1], [2])


def test_bucket_accuracy_counts_each_bucket():
    # (digits, carries): (1, 0) (1, 1) (2, 0) (2, 1) (2, 2) (2, 0)
    level = sm.difficulty([1, 5, 12, 19, 95, 40], [2, 7, 30, 1, 5, 40])
    out = sm.bucket_accuracy([True, False, True, True, False, False], level)
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["by_digits"] == {"1": 0.5, "2": 0.5}
    assert out["by_carries"] == {"0": pytest.approx(2 / 3), "1": 0.5, "2": 0.0}
    assert [(b["digits"], b["carries"], b["count"], b["accuracy"]) for b in out["buckets"]] == [
        (1, 0, 1, 1.0), (1, 1, 1, 0.0), (2, 0, 2, 0.5), (2, 1, 1, 1.0), (2, 2, 1, 0.0)]


def test_heldout_problems_cover_each_digit_count():
    problems = sm.heldout_problems(TINY_LM._replace(max_digits=3), 16)
    level = sm.difficulty(problems.a, problems.b)
    np.testing.assert_array_equal(level.digits <= np.repeat([1, 2, 3], 16), True)
    a, b = arithmetic.parse_prompt(problems.prompts)
    np.testing.assert_array_equal(a, problems.a)
    np.testing.assert_array_equal(b, problems.b)


@pytest.fixture(scope="module")
def tiny_lm():
    return sm.fit_lm(TINY_LM, per_digits=4)


def test_training_is_deterministic(tiny_lm):
    model, record = tiny_lm
    again, record_again = sm.fit_lm(TINY_LM, per_digits=4)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(again))
    np.testing.assert_array_equal(record["step_losses"], record_again["step_losses"])
    assert record["metrics"] == record_again["metrics"]
    assert len(record["step_losses"]) == TINY_LM.train_steps
    # one 25-step epoch; its mean is accumulated in float64, np.mean of the float32 losses in float32
    np.testing.assert_allclose(record["epoch_losses"], [np.mean(record["step_losses"])], rtol=1e-6)
    assert sum(b["count"] for b in record["metrics"]["buckets"]) == 2 * 4
    untrained = sm.arithmetic_model.build(TINY_LM)
    kernel = lambda m: nnx.state(m)["head"]["kernel"][...]  # noqa: E731
    assert not np.array_equal(kernel(model), kernel(untrained))


def test_verifier_data_is_labelled_by_the_exact_checker(tiny_lm):
    config = sm.VerifierConfig(lm=TINY_LM, num_train=16, num_heldout=8, width=8, depth=1, train_steps=4)
    tokens, labels = sm.verifier_data(tiny_lm[0], config, 0, 16)
    assert tokens.shape == (16, TINY_LM.prompt_len + TINY_LM.completion_len)
    texts = arithmetic.decode(tokens)
    expected = []
    for text in texts:                                    # "a+b=<worked steps>#s." read by string operations
        a, rest = text.split("+", 1)
        b = rest.split("=", 1)[0]
        tail = text.split("#", 1)[1] if "#" in text else ""
        answer = tail.split(".", 1)[0] if "." in tail else ""
        expected.append(answer.isdigit() and int(answer) == int(a) + int(b))
    np.testing.assert_array_equal(np.asarray(labels) == 1.0, expected)
    held_out = sm.verifier_data(tiny_lm[0], config, 1, 16)[0]
    assert not np.array_equal(tokens, held_out)
    verifier = sm.verifier_model(config)
    assert verifier(tokens).shape == (16,)
    logits = np.asarray(verifier(tokens), np.float64)
    y = np.asarray(labels, np.float64)
    bce = np.mean(np.logaddexp(0, logits) - y * logits)         # -[y log s + (1 - y) log(1 - s)]
    assert float(sm.verifier_loss(verifier, (tokens, labels), None)) == pytest.approx(bce, rel=1e-5)


@pytest.mark.slow
def test_all_families_train_cache_and_reload(tmp_path, monkeypatch):
    lm = TINY_LM._replace(train_steps=30)
    flow = digits.FlowConfig(width=8, depth=1, num_steps=20, batch_size=32)
    config = sm.ScalingConfig(lm_small=lm, lm_large=lm._replace(width=16), flow_small=flow,
                              flow_large=dataclasses.replace(flow, width=32),
                              verifier=sm.VerifierConfig(lm=lm, num_train=64, num_heldout=32, width=8,
                                                         depth=1, train_steps=10, batch_size=16),
                              eval_per_digits=8)
    first = sm.load_or_train_all(config, directory=tmp_path)
    assert {t.source for t in first} == {"missing"}
    monkeypatch.setattr(sm, "train", None)                       # a reload must not train
    monkeypatch.setattr(digits, "train_flow", None)
    again = sm.load_or_train_all(config, directory=tmp_path)
    for a, b in zip(first, again):
        assert b.source == "cache" and a.metrics == b.metrics and a.seconds == b.seconds
        np.testing.assert_array_equal(a.epoch_losses, b.epoch_losses)
        jax.tree.map(np.testing.assert_array_equal, nnx.state(a.model), nnx.state(b.model))
    assert again.lm_large.num_params == model_cache.num_params(sm.arithmetic_model.build(config.lm_large))
    assert (tmp_path / sm.plot_losses(again, tmp_path / "losses.png")).stat().st_size > 0
    assert set(sm.summary(again)) == {"lm_small", "lm_large", "flow_small", "flow_large", "verifier"}
    with pytest.raises(ValueError, match="verifier.lm"):
        sm.load_or_train_all(config._replace(lm_small=lm._replace(seed=3)), directory=tmp_path)
