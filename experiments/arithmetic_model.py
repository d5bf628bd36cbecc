"""Train-or-load a small decoder-only transformer on worked multi-digit addition.

The task is :mod:`itscale.verifiers.arithmetic_task`: prompt ``a+b=`` (left-padded with PAD, which the
model sees as a token in training and at inference alike), completion = the per-digit worked steps,
``#``, the answer, EOS. Training minimises the next-token cross-entropy of the completion
(:func:`itscale.models.transformer.next_token_loss` with the completion mask) with AdamW and a
warm-up + cosine learning-rate schedule, on problems drawn inside the compiled loop
(:func:`itscale.models.training.train`), so a run is a pure function of the :class:`ModelConfig`
(seed included): same config, same weights.

The trained parameters are cached in ``out_dir`` as one ``.npz`` file named after a hash of the
config, written atomically (temporary file + ``os.replace``); a rerun with the same config loads
it instead of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from itscale.models.training import train
from itscale.models.transformer import Transformer, next_token_loss
from itscale.verifiers import arithmetic


class ModelConfig(NamedTuple):
    """Task size, architecture and optimisation of the arithmetic model (all static)."""

    max_digits: int = 3
    min_digits: int = 2
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    train_steps: int = 400
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0

    @property
    def prompt_len(self) -> int:
        return arithmetic.prompt_length(self.max_digits)

    @property
    def completion_len(self) -> int:
        return arithmetic.completion_length(self.max_digits)

    @property
    def num_steps(self) -> int:
        """Reasoning steps of a completion: one per digit, then the answer segment."""
        return self.max_digits + 1

    @property
    def max_len(self) -> int:
        """Prompt plus the step-structured buffer (num_steps steps of up to STEP_LENGTH tokens)."""
        return self.prompt_len + max(self.completion_len, self.num_steps * arithmetic.STEP_LENGTH)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._asdict(), sort_keys=True).encode()).hexdigest()[:12]


def build(config: ModelConfig) -> Transformer:
    """The untrained model of ``config`` (initialised from ``config.seed``)."""
    return Transformer(arithmetic.VOCAB_SIZE, width=config.width, depth=config.depth,
                       num_heads=config.num_heads, mlp_ratio=4, max_len=config.max_len,
                       rngs=nnx.Rngs(config.seed))


def problems(config: ModelConfig):
    """``draw(key) -> (tokens, loss_mask)``: a training batch of fresh problems."""
    def draw(key):
        batch = arithmetic.sample_problems(key, config.batch_size, config.max_digits,
                                           min_digits=config.min_digits)
        return batch.tokens, batch.loss_mask
    return draw


def completion_loss(model: Transformer, batch, key) -> jax.Array:
    tokens, mask = batch
    return next_token_loss(model, tokens, mask)


def optimizer(config: ModelConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                  config.train_steps, config.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def checkpoint_path(out_dir: pathlib.Path, config: ModelConfig) -> pathlib.Path:
    return pathlib.Path(out_dir) / f"arithmetic_model_{config.digest()}.npz"


def save(model: Transformer, path: pathlib.Path, extra: dict) -> None:
    """Every leaf of the model state (by tree path) and ``extra`` (JSON) in one .npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(extra)), **arrays)
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def load(model: Transformer, path: pathlib.Path) -> dict:
    """Write the arrays of ``path`` into ``model`` (same config); returns the stored ``extra``."""
    with np.load(path) as stored:
        state = nnx.state(model)
        paths, treedef = jax.tree_util.tree_flatten_with_path(state)
        keys = [jax.tree_util.keystr(p) for p, _ in paths]
        missing = sorted(set(keys) - set(stored.files))
        if missing:
            raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:3]}")
        leaves = [jnp.asarray(stored[k], dtype=v.dtype) for k, (_, v) in zip(keys, paths)]
        nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
        return json.loads(str(stored["__meta__"]))


class TrainedModel(NamedTuple):
    model: Transformer
    config: ModelConfig
    losses: list        # training loss every ~1% of the steps (from the run that trained it)
    loaded: bool        # True when read from the checkpoint


def train_or_load(out_dir: pathlib.Path, config: ModelConfig = ModelConfig()) -> TrainedModel:
    """The trained model of ``config``: loaded from ``out_dir`` if cached, else trained and cached."""
    path = checkpoint_path(out_dir, config)
    model = build(config)
    if path.exists():
        meta = load(model, path)
        return TrainedModel(model, config, meta["losses"], True)
    model, losses = train(completion_loss, model, problems(config), optimizer(config), config.train_steps,
                          key=jax.random.key(config.seed))
    stride = max(1, len(losses) // 100)
    losses = [float(x) for x in losses[::stride]]
    save(model, path, {"config": config._asdict(), "losses": losses})
    return TrainedModel(model, config, losses, False)
