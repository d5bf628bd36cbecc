"""Digits: the loader (shapes, range, split), tiny training runs (the loss falls; a retrain gives the same
weights), the verified on-disk cache (round trip, corrupt and mismatched files retrained), and the trained
flow as a sampler's model with traced weights."""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import itscale as its
from experiments import digits_models
from itscale.models import digits

TINY_FLOW = digits.FlowConfig(width=64, depth=2, time_features=4, num_steps=300, batch_size=128)
TINY_CLASSIFIER = digits.ClassifierConfig(width=32, depth=1, num_steps=150, batch_size=64)


@pytest.fixture(scope="module")
def data():
    return digits.load_digits()


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache")
    return directory, digits_models.load_or_train(TINY_FLOW, TINY_CLASSIFIER, directory=directory)


def _weights(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


def _assert_same_weights(a, b):
    jax.tree.map(np.testing.assert_array_equal, _weights(a), _weights(b))


def test_loader_scales_pixels_and_splits_deterministically(data):
    from sklearn.datasets import load_digits
    raw = load_digits()
    assert data.train_x.shape == (1437, 64) and data.test_x.shape == (360, 64)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int32
    both = np.concatenate([data.train_x, data.test_x])
    assert both.min() == -1.0 and both.max() == 1.0
    np.testing.assert_array_equal((both + 1.0) * 8.0, np.round((both + 1.0) * 8.0))     # x = p / 8 - 1
    # the split is a partition of the data set, stratified by class
    key = lambda x, y: sorted(map(tuple, np.column_stack([x, y]).tolist()))
    assert key(both, np.concatenate([data.train_y, data.test_y])) == key(raw.data / 8.0 - 1.0, raw.target)
    held_out, total = np.bincount(data.test_y, minlength=10), np.bincount(raw.target, minlength=10)
    assert np.all(np.abs(held_out - 0.2 * total) <= 1)
    again, other = digits.load_digits(), digits.load_digits(digits.Split(seed=1))
    for a, b in zip(data, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(data.test_y, other.test_y)
    with pytest.raises(ValueError, match="holdout_fraction"):
        digits.load_digits(digits.Split(holdout_fraction=1.0))


def test_epoch_means():
    np.testing.assert_allclose(digits.epoch_means(np.arange(7.0), 3), [1.0, 4.0, 6.0])
    assert digits.steps_per_epoch(1437, 128) == 12


def test_cache_round_trip_returns_the_trained_models(cached):
    directory, first = cached
    assert first.flow_record.source == first.classifier_record.source == "missing"
    again = digits_models.load_or_train(TINY_FLOW, TINY_CLASSIFIER, directory=directory)
    assert again.flow_record.source == again.classifier_record.source == "cache"
    _assert_same_weights(first.flow, again.flow)
    _assert_same_weights(first.classifier, again.classifier)
    for a, b in ((first.flow_record, again.flow_record), (first.classifier_record, again.classifier_record)):
        np.testing.assert_array_equal(a.epoch_losses, b.epoch_losses)
        np.testing.assert_array_equal(a.step_losses, b.step_losses)
        assert a.metrics == b.metrics and a.seconds == b.seconds and a.path == b.path
    files = sorted(p.name for p in (pathlib.Path(directory) / "digits").iterdir())
    assert len(files) == 4 and not any(name.startswith(".") for name in files)        # no temporary left
    curves = json.loads(first.flow_record.path.with_suffix(".curves.json").read_text())
    np.testing.assert_allclose(curves["epoch_losses"], first.flow_record.epoch_losses, rtol=1e-12)
    assert curves["config"]["num_steps"] == TINY_FLOW.num_steps


def test_training_lowers_the_loss(cached, data):
    _, trained = cached
    flow, clf = trained.flow_record, trained.classifier_record
    steps = digits.steps_per_epoch(len(data.train_x), TINY_FLOW.batch_size)
    assert len(flow.step_losses) == TINY_FLOW.num_steps and len(flow.epoch_losses) == -(-300 // steps)
    assert flow.epoch_losses[-1] < 0.7 * flow.epoch_losses[0]
    assert clf.epoch_losses[-1] < 0.5 * clf.epoch_losses[0]
    untrained_flow = digits.heldout_flow_loss(digits.flow_model(TINY_FLOW), data.test_x)
    assert flow.metrics["heldout_loss"] == pytest.approx(digits.heldout_flow_loss(trained.flow, data.test_x))
    assert flow.metrics["heldout_loss"] < 0.8 * untrained_flow
    untrained = digits.classifier_metrics(digits.classifier_model(TINY_CLASSIFIER), data.test_x, data.test_y)
    assert clf.metrics["heldout_accuracy"] > max(0.8, untrained["accuracy"] + 0.5)


def test_corrupt_files_are_detected_and_retrained_to_the_same_weights(cached, tmp_path):
    directory, first = cached
    shutil.copytree(pathlib.Path(directory) / "digits", tmp_path / "digits")
    flow_file = tmp_path / "digits" / first.flow_record.path.name
    classifier_file = tmp_path / "digits" / first.classifier_record.path.name
    raw = bytearray(flow_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01                                       # one flipped bit in the weights
    flow_file.write_bytes(bytes(raw))
    classifier_file.write_bytes(classifier_file.read_bytes()[:-100])  # a truncated file

    retrained = digits_models.load_or_train(TINY_FLOW, TINY_CLASSIFIER, directory=tmp_path)
    assert retrained.flow_record.source == "corrupt: checksum mismatch"
    assert retrained.classifier_record.source.startswith("corrupt: unreadable")
    _assert_same_weights(first.flow, retrained.flow)                 # training is deterministic
    _assert_same_weights(first.classifier, retrained.classifier)
    np.testing.assert_array_equal(first.flow_record.step_losses, retrained.flow_record.step_losses)
    healed = digits_models.load_or_train(TINY_FLOW, TINY_CLASSIFIER, directory=tmp_path)
    assert healed.flow_record.source == healed.classifier_record.source == "cache"


def test_files_of_another_config_or_shape_are_refused(cached, tmp_path):
    directory, first = cached
    other = dataclasses.replace(TINY_FLOW, seed=1)
    assert digits_models.config_hash("flow", other) != digits_models.config_hash("flow", TINY_FLOW)
    assert digits_models.cache_path(directory, "flow", other) != first.flow_record.path
    model = digits.flow_model(TINY_FLOW)
    expected = digits_models.config_hash("flow", TINY_FLOW)
    assert digits_models.load(first.flow_record.path, model, digits_models.config_hash("flow", other)) == (
        None, "stale: another config or format")
    path = tmp_path / "flow.msgpack"
    wider = digits.flow_model(dataclasses.replace(TINY_FLOW, width=8))
    digits_models.save(path, wider, expected, {"step_losses": [1.0], "epoch_losses": [1.0], "metrics": {},
                                               "seconds": 0.0})
    before = _weights(model)
    assert digits_models.load(path, model, expected) == (None, "corrupt: weights do not fit the model")
    jax.tree.map(np.testing.assert_array_equal, before, _weights(model))       # left untouched
    assert digits_models.load(tmp_path / "absent.msgpack", model, expected) == (None, "missing")
    digits_models.save(path, model, expected, {"step_losses": [1.0]})
    assert digits_models.load(path, model, expected) == (None, "corrupt: fields missing")
    assert digits_models.cache_dir(tmp_path) == tmp_path / "digits"


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(digits_models.ENV_VAR, str(tmp_path))
    assert digits_models.cache_dir() == tmp_path / "digits"


def test_trained_flow_samples_with_traced_weights(cached, data):
    _, trained = cached
    sampler = its.refine.ode(trained.flow, solver="heun", path=its.paths.linear())
    assert sampler.weights                                           # weights are arguments, not constants
    assert its.refine.ode(trained.flow, solver="heun", path=its.paths.linear()).step is sampler.step
    noise = jax.random.normal(jax.random.key(0), (512, 64))
    result = its.run(sampler, jax.random.key(1), noise, num_steps=8)
    x = np.asarray(result.output)
    assert np.isfinite(x).all() and int(result.stats.nonfinite) == 0
    assert np.abs(x).max() < 6.0
    data_mean = data.train_x.mean(0)
    assert np.linalg.norm(x.mean(0) - data_mean) < 0.3 * np.linalg.norm(data_mean)  # noise's is 1
