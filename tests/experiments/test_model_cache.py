"""The model cache: a round trip gives the same weights and record; a flipped byte, a truncated file, a file
of another config or of another shape are refused and the model recomputed; writes are atomic; the cache
folder comes from the argument, else $ITSCALE_CACHE, else ~/.cache/itscale."""

import dataclasses
import os
import pathlib
from typing import NamedTuple

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import model_cache


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 8
    seed: int = 0


class Inner(NamedTuple):
    rate: float = 0.5


def build(config: Config) -> nnx.Module:
    return nnx.Sequential(nnx.Linear(3, config.width, rngs=nnx.Rngs(config.seed)),
                          nnx.Linear(config.width, 2, rngs=nnx.Rngs(config.seed + 1)))


class Fit:
    """A deterministic stand-in for training (weights from another seed), counting its calls."""

    def __init__(self, config: Config):
        self.config, self.calls = config, 0

    def __call__(self):
        self.calls += 1
        model = build(dataclasses.replace(self.config, seed=self.config.seed + 10))
        losses = np.array([1.5, 0.25, np.float32(0.1)], np.float32)
        metrics = {"accuracy": np.float64(0.75), "n": 3}
        return model, {"epoch_losses": losses, "metrics": metrics, "seconds": 2.0}


def weights(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


def assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, weights(a), weights(b))


def run(directory, config=Config(), fit=None):
    fit = Fit(config) if fit is None else fit
    return model_cache.load_or_train("toy", config, build, fit, directory=directory,
                                     fields={"epoch_losses", "metrics"}), fit


def test_round_trip_gives_identical_weights_and_record(tmp_path):
    first, fit = run(tmp_path)
    assert first.source == "missing" and fit.calls == 1
    assert first.path == tmp_path / f"toy-{model_cache.config_hash('toy', Config())[:16]}.msgpack"
    again, fit_again = run(tmp_path)
    assert again.source == "cache" and fit_again.calls == 0
    assert_same(first.model, again.model)
    assert first.record == again.record
    # the record is returned in JSON types, as stored: float32 values read back exactly
    assert again.record["epoch_losses"] == [float(np.float32(x)) for x in (1.5, 0.25, 0.1)]
    assert again.record["metrics"] == {"accuracy": 0.75, "n": 3}
    assert again.record["seconds"] == 2.0                       # fit's own figure wins over the wall time
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]   # no temporary file left


def test_seconds_default_to_the_wall_time_of_fit(tmp_path):
    def fit():
        return build(Config(seed=3)), {"epoch_losses": [1.0], "metrics": {}}
    cached, _ = run(tmp_path, fit=fit)
    assert 0 < cached.record["seconds"] < 60


def _corrupt_flip(path: pathlib.Path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def _corrupt_truncate(path: pathlib.Path):
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("corrupt, reason", [(_corrupt_flip, "corrupt: checksum mismatch"),
                                             (_corrupt_truncate, "corrupt: unreadable"),
                                             (lambda p: p.write_bytes(b""), "corrupt: unreadable"),
                                             (lambda p: p.unlink(), "missing")])
def test_damaged_files_are_detected_and_recomputed(tmp_path, corrupt, reason):
    first, _ = run(tmp_path)
    corrupt(first.path)
    retrained, fit = run(tmp_path)
    assert retrained.source.startswith(reason) and fit.calls == 1
    assert_same(first.model, retrained.model)
    assert retrained.record == first.record
    healed, fit = run(tmp_path)                                   # the file was rewritten
    assert healed.source == "cache" and fit.calls == 0


def test_files_of_another_config_shape_or_record_are_refused(tmp_path):
    first, _ = run(tmp_path)
    other = Config(seed=1)
    assert model_cache.config_hash("toy", other) != model_cache.config_hash("toy", Config())
    assert model_cache.config_hash("other", Config()) != model_cache.config_hash("toy", Config())
    # a valid file of another config placed where this config's file goes
    other_path = model_cache.cache_path(tmp_path, "toy", other)
    other_path.write_bytes(first.path.read_bytes())
    refused, fit = run(tmp_path, other)
    assert refused.source == "stale: another config or format" and fit.calls == 1
    # the right config hash, but weights of another shape: refused, the model left untouched
    model, expected = build(Config()), model_cache.config_hash("toy", Config())
    model_cache.save(first.path, build(Config(width=5)), expected, {"epoch_losses": [], "metrics": {}})
    before = weights(model)
    assert model_cache.load(first.path, model, expected) == (None, "corrupt: weights do not fit the model")
    jax.tree.map(np.testing.assert_array_equal, before, weights(model))
    # a record without the required fields
    model_cache.save(first.path, model, expected, {"epoch_losses": []})
    assert model_cache.load(first.path, model, expected, frozenset({"metrics"})) == (
        None, "corrupt: fields missing")
    assert model_cache.load(first.path, model, expected)[1] == "cache"


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    first, _ = run(tmp_path)
    before = first.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        model_cache.save(first.path, build(Config(seed=5)), "another hash", {})
    assert first.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_cache_folder_argument_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(model_cache.ENV_VAR, raising=False)
    assert model_cache.cache_dir() == tmp_path / "home" / ".cache" / "itscale"
    monkeypatch.setenv(model_cache.ENV_VAR, str(tmp_path / "env"))
    assert model_cache.cache_dir() == tmp_path / "env"
    assert model_cache.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    cached, _ = run(None)
    assert cached.path.parent == tmp_path / "env"


def test_config_hash_reads_every_field_of_nested_configs():
    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner = Inner()
        sizes: tuple = (1, 2)

    assert model_cache.plain(Outer()) == {"inner": {"rate": 0.5}, "sizes": [1, 2]}
    base = model_cache.config_hash("k", Outer())
    as_dict = {"inner": {"rate": 0.5}, "sizes": [1, 2]}
    assert base == model_cache.config_hash("k", Outer()) == model_cache.config_hash("k", as_dict)
    assert base != model_cache.config_hash("k", Outer(inner=Inner(rate=0.25)))
    assert base != model_cache.config_hash("k", Outer(sizes=(1, 3)))


def test_parameter_count_without_initialising():
    config = Config(width=7)
    abstract = model_cache.abstract(build, config)
    assert model_cache.num_params(abstract) == (3 * 7 + 7) + (7 * 2 + 2)
    assert model_cache.num_params(abstract) == model_cache.num_params(build(config))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(abstract)))
