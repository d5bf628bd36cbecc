"""Train-or-load the digits models (:mod:`itscale.models.digits`): a flow and a classifier, cached on disk.

``load_or_train()`` returns both trained NNX modules with their training records. Each model is
cached by :mod:`experiments.model_cache` (verified on load: config hash, payload SHA-256, weight shapes;
retrained and rewritten atomically when missing, stale or corrupt) as ``<kind>-<config hash>.msgpack``
in the ``digits`` subfolder of the cache folder (the ``directory`` argument, else ``$ITSCALE_CACHE``,
else ``~/.cache/itscale``); its record holds the per-step and per-epoch losses, held-out metrics and
training seconds. The loss curves are also written beside it as ``<kind>-<hash>.curves.json``.

Run ``python -m experiments.digits_models`` to train (or load) the full-size models and print the
training times, final losses, held-out figures and cache size.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

from experiments import model_cache
from experiments.common import write_json_atomic
from experiments.model_cache import ENV_VAR, config_hash, save  # noqa: F401  (part of this module's API)
from itscale.models import digits
from itscale.models.mlp import MLP

SUBFOLDER = "digits"
_FIELDS = frozenset({"step_losses", "epoch_losses", "metrics", "seconds"})


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
    return model_cache.cache_dir(directory) / SUBFOLDER


def cache_path(directory, kind: str, config) -> pathlib.Path:
    return model_cache.cache_path(cache_dir(directory), kind, config)


def load(path: pathlib.Path, model: nnx.Module, expected_hash: str) -> tuple[dict | None, str]:
    """:func:`experiments.model_cache.load` requiring the fields of a digits record."""
    return model_cache.load(path, model, expected_hash, _FIELDS)


def load_or_train_one(kind: str, config, build: Callable[[Any], nnx.Module],
                      fit: Callable[[], tuple[nnx.Module, np.ndarray, dict]], num_train: int,
                      directory=None) -> tuple[nnx.Module, TrainingRecord]:
    """The model of ``config``: verified from the cache, else ``fit()`` (model, step losses, metrics),
    timed and cached."""
    def fit_record():
        model, step_losses, metrics = fit()
        epochs = digits.epoch_means(step_losses, digits.steps_per_epoch(num_train, config.batch_size))
        return model, {"step_losses": step_losses, "epoch_losses": epochs, "metrics": metrics}

    cached = model_cache.load_or_train(kind, config, build, fit_record, directory=cache_dir(directory),
                                       fields=_FIELDS)
    stored = cached.record
    if cached.source != "cache":
        write_json_atomic(cached.path.with_suffix(".curves.json"),
                          {"config": dataclasses.asdict(config), "epoch_losses": stored["epoch_losses"],
                           "metrics": stored["metrics"], "seconds": stored["seconds"]})
    record = TrainingRecord(np.asarray(stored["epoch_losses"]), np.asarray(stored["step_losses"]),
                            {k: float(v) for k, v in stored["metrics"].items()}, float(stored["seconds"]),
                            cached.path, cached.source)
    return cached.model, record


def load_or_train_flow(config: digits.FlowConfig, data: digits.DigitsData | None = None, *,
                       directory: str | os.PathLike | None = None) -> tuple[MLP, TrainingRecord]:
    """The trained flow of ``config`` (held-out flow-matching loss in the metrics), cached; ``data``: the
    digits of ``config.split`` (loaded when None)."""
    data = digits.load_digits(config.split) if data is None else data

    def fit():
        model, losses = digits.train_flow(config, data)
        return model, losses, {"heldout_loss": digits.heldout_flow_loss(model, data.test_x)}

    return load_or_train_one("flow", config, digits.flow_model, fit, data.train_x.shape[0], directory)


def load_or_train(flow_config: digits.FlowConfig = digits.FlowConfig(),
                  classifier_config: digits.ClassifierConfig = digits.ClassifierConfig(), *,
                  directory: str | os.PathLike | None = None) -> DigitsModels:
    """The trained digits flow and classifier (NNX modules; pass them to samplers as they are, their
    weights reach the compiled loop as traced arguments), loaded from the cache or trained."""
    if flow_config.split != classifier_config.split:
        raise ValueError("flow_config.split and classifier_config.split must be the same split "
                         f"(got {flow_config.split} and {classifier_config.split})")
    data = digits.load_digits(flow_config.split)

    def fit_classifier():
        model, losses = digits.train_classifier(classifier_config, data)
        return model, losses, {f"heldout_{k}": v
                               for k, v in digits.classifier_metrics(model, data.test_x, data.test_y).items()}

    flow, flow_record = load_or_train_flow(flow_config, data, directory=directory)
    classifier, classifier_record = load_or_train_one("classifier", classifier_config,
                                                      digits.classifier_model, fit_classifier,
                                                      data.train_x.shape[0], directory)
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
