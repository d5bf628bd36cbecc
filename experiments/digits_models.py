"""Train-or-load the digits models (:mod:`itscale.models.digits`): a flow and a classifier, cached on disk.

``load_or_train()`` returns both trained NNX modules with their training records. Each model is
cached as one file ``<kind>-<config hash>.msgpack`` in the cache folder (the ``directory`` argument, else
``$ITSCALE_CACHE``, else ``~/.cache/itscale``; a ``digits`` subfolder): a msgpack envelope holding the
hash of the training config (kind, format version, every config field), the SHA-256 of the payload,
and the payload (the weights as a pure state dict, the per-step and per-epoch losses, held-out metrics,
training seconds). A file is used only if it parses, its config hash is the expected one, the payload's
checksum matches and every weight has the model's shape and dtype; otherwise the model is retrained
(the reason is reported in the record) and the file rewritten atomically (temporary file in the same
folder, ``os.replace``). The loss curves are also written beside it as ``<kind>-<hash>.curves.json``.

Run ``python -m experiments.digits_models`` to train (or load) the full-size models and print the
training times, final losses, held-out figures and cache size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx, serialization, traverse_util

from experiments.common import write_json_atomic
from itscale.models import digits
from itscale.models.mlp import MLP

FORMAT_VERSION = 1
ENV_VAR = "ITSCALE_CACHE"
_FIELDS = {"weights", "step_losses", "epoch_losses", "metrics", "seconds"}


class TrainingRecord(NamedTuple):
    """How a cached model was trained: ``epoch_losses`` (mean training loss per epoch), ``step_losses``,
    held-out ``metrics``, training ``seconds`` (of the run that trained it), the cache ``path``, and
    ``source``: "cache" when loaded, else why it was trained ("missing", "corrupt: ...", ...)."""

    epoch_losses: np.ndarray
    step_losses: np.ndarray
    metrics: dict
    seconds: float
    path: pathlib.Path
    source: str


class DigitsModels(NamedTuple):
    """The trained flow (velocity model on the linear path) and classifier, with their records and data."""

    flow: MLP
    classifier: digits.Classifier
    data: digits.DigitsData
    flow_record: TrainingRecord
    classifier_record: TrainingRecord


def cache_dir(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """``directory``, else ``$ITSCALE_CACHE``, else ``~/.cache/itscale``; with a ``digits`` subfolder."""
    root = directory or os.environ.get(ENV_VAR) or pathlib.Path.home() / ".cache" / "itscale"
    return pathlib.Path(root) / "digits"


def config_hash(kind: str, config) -> str:
    """SHA-256 of the kind, the format version and every field of the (dataclass) config."""
    text = json.dumps({"kind": kind, "format": FORMAT_VERSION, "config": dataclasses.asdict(config)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(directory, kind: str, config) -> pathlib.Path:
    return cache_dir(directory) / f"{kind}-{config_hash(kind, config)[:16]}.msgpack"


def save(path: pathlib.Path, model: nnx.Module, expected_hash: str, record: dict) -> None:
    """Write the model's weights and ``record`` under a checksum, atomically."""
    payload = serialization.msgpack_serialize({
        "weights": jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model))),
        **{k: np.asarray(v) if isinstance(v, (list, np.ndarray)) else v for k, v in record.items()}})
    envelope = serialization.msgpack_serialize({
        "format": FORMAT_VERSION, "config_hash": expected_hash,
        "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(envelope)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def load(path: pathlib.Path, model: nnx.Module, expected_hash: str) -> tuple[dict | None, str]:
    """Verify ``path`` and write its weights into ``model``: ``(record, "cache")``, or ``(None, reason)``
    when the file is missing, unreadable, of another config, fails its checksum or does not fit."""
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
    except Exception as error:                     # any parse failure means the bytes are not ours
        return None, f"corrupt: unreadable ({type(error).__name__})"
    if not isinstance(stored, dict) or not _FIELDS <= stored.keys():
        return None, "corrupt: fields missing"
    state = nnx.state(model)
    if _signature(nnx.to_pure_dict(state)) != _signature(stored["weights"]):
        return None, "corrupt: weights do not fit the model"
    nnx.replace_by_pure_dict(state, stored.pop("weights"))
    nnx.update(model, state)
    return stored, "cache"


def _signature(tree) -> dict:
    flat = traverse_util.flatten_dict(tree)
    return {tuple(map(str, k)): (np.shape(v), np.asarray(v).dtype.str) for k, v in flat.items()}


def load_or_train_one(kind: str, config, build: Callable[[Any], nnx.Module],
                      fit: Callable[[], tuple[nnx.Module, np.ndarray, dict]], num_train: int,
                      directory=None) -> tuple[nnx.Module, TrainingRecord]:
    """The model of ``config``: verified from the cache, else ``fit()`` (model, step losses, metrics),
    timed and cached."""
    path, expected = cache_path(directory, kind, config), config_hash(kind, config)
    model = build(config)
    stored, source = load(path, model, expected)
    if stored is None:
        start = time.perf_counter()
        model, step_losses, metrics = fit()
        seconds = time.perf_counter() - start
        epochs = digits.epoch_means(step_losses, digits.steps_per_epoch(num_train, config.batch_size))
        stored = {"step_losses": np.asarray(step_losses), "epoch_losses": epochs, "metrics": metrics,
                  "seconds": seconds}
        save(path, model, expected, stored)
        write_json_atomic(path.with_suffix(".curves.json"),
                          {"config": dataclasses.asdict(config), "epoch_losses": epochs, "metrics": metrics,
                           "seconds": seconds})
    record = TrainingRecord(np.asarray(stored["epoch_losses"]), np.asarray(stored["step_losses"]),
                            {k: float(v) for k, v in stored["metrics"].items()}, float(stored["seconds"]),
                            path, source)
    return model, record


def load_or_train(flow_config: digits.FlowConfig = digits.FlowConfig(),
                  classifier_config: digits.ClassifierConfig = digits.ClassifierConfig(), *,
                  directory: str | os.PathLike | None = None) -> DigitsModels:
    """The trained digits flow and classifier (NNX modules; pass them to samplers as they are, their
    weights reach the compiled loop as traced arguments), loaded from the cache or trained."""
    if flow_config.split != classifier_config.split:
        raise ValueError("flow_config.split and classifier_config.split must be the same split "
                         f"(got {flow_config.split} and {classifier_config.split})")
    data = digits.load_digits(flow_config.split)
    num_train = data.train_x.shape[0]

    def fit_flow():
        model, losses = digits.train_flow(flow_config, data)
        return model, losses, {"heldout_loss": digits.heldout_flow_loss(model, data.test_x)}

    def fit_classifier():
        model, losses = digits.train_classifier(classifier_config, data)
        return model, losses, {f"heldout_{k}": v
                               for k, v in digits.classifier_metrics(model, data.test_x, data.test_y).items()}

    flow, flow_record = load_or_train_one("flow", flow_config, digits.flow_model, fit_flow, num_train,
                                          directory)
    classifier, classifier_record = load_or_train_one("classifier", classifier_config,
                                                      digits.classifier_model, fit_classifier, num_train,
                                                      directory)
    return DigitsModels(flow, classifier, data, flow_record, classifier_record)


def main() -> None:
    models = load_or_train()
    for name, record in (("flow", models.flow_record), ("classifier", models.classifier_record)):
        curve = ", ".join(f"{x:.4f}" for x in record.epoch_losses[:: max(1, len(record.epoch_losses) // 8)])
        print(f"{name}: {record.source}; trained in {record.seconds:.1f} s; "
              f"{len(record.epoch_losses)} epochs; "
              f"final epoch loss {record.epoch_losses[-1]:.4f}; metrics {record.metrics}; "
              f"{record.path} ({record.path.stat().st_size / 1e6:.2f} MB)")
        print(f"  epoch losses (every {max(1, len(record.epoch_losses) // 8)}th): {curve}")


if __name__ == "__main__":
    main()
