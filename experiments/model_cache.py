"""The one on-disk cache of trained models: an NNX module's state and its training record, verified.

A model is cached as one file ``<kind>-<hash[:16]>.msgpack`` in the cache folder (the ``directory``
argument, else ``$ITSCALE_CACHE``, else ``~/.cache/itscale``), where ``hash`` is the SHA-256 of the
kind, the format version and every field of the training config (:func:`config_hash`). The file is a
msgpack envelope ``{format, config_hash, sha256, payload}``; the payload holds the weights (the pure
state dict of the module) and the record (JSON text: losses per epoch, metrics, training seconds, ...).

A file is used only if it parses, its format and config hash are the expected ones, the SHA-256 of
its payload matches the stored one, and every weight has the shape and dtype of the freshly built
model; otherwise :func:`load_or_train` trains again, reports why in ``source`` and rewrites the file
atomically (temporary file in the same folder, fsync, ``os.replace``), so a reader never sees half a
file and a corrupt or stale file is never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx, serialization, traverse_util

from experiments.common import write_bytes_atomic

FORMAT_VERSION = 1
ENV_VAR = "ITSCALE_CACHE"


class Cached(NamedTuple):
    """A trained module, its record (JSON types, as stored), the cache file and ``source``: "cache" when
    loaded, else why it was trained ("missing", "stale: ...", "corrupt: ...")."""

    model: nnx.Module
    record: dict
    path: pathlib.Path
    source: str


def cache_dir(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """``directory``, else ``$ITSCALE_CACHE``, else ``~/.cache/itscale``."""
    return pathlib.Path(directory or os.environ.get(ENV_VAR) or pathlib.Path.home() / ".cache" / "itscale")


def plain(config: Any) -> Any:
    """JSON types of a config: dataclasses and NamedTuples become dicts of their fields (recursively)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple) and hasattr(config, "_asdict"):
        return {k: plain(v) for k, v in config._asdict().items()}
    if isinstance(config, dict):
        return {str(k): plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [plain(v) for v in config]
    return config.tolist() if hasattr(config, "tolist") else config


def config_hash(kind: str, config: Any) -> str:
    """SHA-256 (hex) of the kind, the format version and every field of ``config``."""
    text = json.dumps({"kind": kind, "format": FORMAT_VERSION, "config": plain(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(directory: str | os.PathLike | None, kind: str, config: Any) -> pathlib.Path:
    """``<cache folder>/<kind>-<config hash[:16]>.msgpack``."""
    return cache_dir(directory) / f"{kind}-{config_hash(kind, config)[:16]}.msgpack"


def record_json(record: dict) -> str:
    """The record as JSON text (numpy / JAX arrays and scalars as lists and numbers)."""
    return json.dumps(record, sort_keys=True, default=lambda x: np.asarray(x).tolist())


def save(path: pathlib.Path, model: nnx.Module, expected_hash: str, record: dict) -> None:
    """Write the module's state and ``record`` (JSON-able) under a SHA-256 checksum, atomically."""
    payload = serialization.msgpack_serialize({
        "weights": jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model))),
        "record": record_json(record)})
    envelope = serialization.msgpack_serialize({
        "format": FORMAT_VERSION, "config_hash": expected_hash,
        "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})
    write_bytes_atomic(path, envelope)


def load(path: pathlib.Path, model: nnx.Module, expected_hash: str, fields: frozenset = frozenset()
         ) -> tuple[dict | None, str]:
    """Verify ``path`` and write its weights into ``model``: ``(record, "cache")``, or ``(None, reason)``
    when the file is missing, unreadable, of another config or format, fails its checksum, lacks one of
    the record ``fields`` or does not fit the model (then ``model`` is left untouched)."""
    if not path.exists():
        return None, "missing"
    try:
        envelope = serialization.msgpack_restore(path.read_bytes())
        payload = envelope["payload"]
        if envelope["format"] != FORMAT_VERSION or envelope["config_hash"] != expected_hash:
            return None, "stale: another config or format"
        if hashlib.sha256(payload).hexdigest() != envelope["sha256"]:
            return None, "corrupt: checksum mismatch"
        stored = serialization.msgpack_restore(payload)
        record = json.loads(stored["record"])
        weights = stored["weights"]
    except Exception as error:                     # any parse failure means the bytes are not ours
        return None, f"corrupt: unreadable ({type(error).__name__})"
    if not isinstance(record, dict) or not fields <= record.keys():
        return None, "corrupt: fields missing"
    state = nnx.state(model)
    if signature(nnx.to_pure_dict(state)) != signature(weights):
        return None, "corrupt: weights do not fit the model"
    nnx.replace_by_pure_dict(state, weights)
    nnx.update(model, state)
    return record, "cache"


def signature(tree: Any) -> dict:
    """``{key path: (shape, dtype)}`` of a nested dict of arrays (keys as strings)."""
    if not isinstance(tree, dict):
        return {}
    flat = traverse_util.flatten_dict(tree)
    return {tuple(map(str, k)): (np.shape(v), np.asarray(v).dtype.str) for k, v in flat.items()}


def load_or_train(kind: str, config: Any, build: Callable[[Any], nnx.Module],
                  fit: Callable[[], tuple[nnx.Module, dict]], *, directory: str | os.PathLike | None = None,
                  fields: frozenset = frozenset()) -> Cached:
    """The model of ``config``: verified from the cache, else ``fit() -> (model, record)``, timed and cached.

    ``build(config)`` makes the untrained module (the shapes a cached file must match); a cached record
    must hold every key of ``fields``. The record gains ``seconds`` (wall time of
    ``fit``, unless ``fit`` reports its own, e.g. training alone) and is returned as stored (JSON
    types), whether loaded or freshly trained.
    """
    path, expected = cache_path(directory, kind, config), config_hash(kind, config)
    model = build(config)
    record, source = load(path, model, expected, frozenset(fields))
    if record is None:
        start = time.perf_counter()
        model, record = fit()
        record = {"seconds": time.perf_counter() - start, **record}
        save(path, model, expected, record)
        record = json.loads(record_json(record))
    return Cached(model, record, path, source)


def num_params(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param`` entries) of a module (abstract ones included)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def abstract(build: Callable[[Any], nnx.Module], config: Any) -> nnx.Module:
    """The module of ``config`` with shapes only (no initialisation, no memory): for counting parameters."""
    return nnx.eval_shape(lambda: build(config))
