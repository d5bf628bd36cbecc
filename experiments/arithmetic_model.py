"""Train-or-load a small decoder-only transformer on worked multi-digit addition.

The task is :mod:`itscale.verifiers.arithmetic_task`: prompt ``a+b=`` (left-padded with PAD, which the
model sees as a token in training and at inference alike), completion = the per-digit worked steps,
``#``, the answer, EOS. Training minimises the next-token cross-entropy of the completion
(:func:`itscale.models.transformer.next_token_loss` with the completion mask) with AdamW and a
warm-up + cosine learning-rate schedule, on problems drawn inside the compiled loop
(:func:`itscale.models.training.train`), so a run is a pure function of the :class:`ModelConfig`
(seed included): same config, same weights.

The trained parameters are cached in ``out_dir`` by :mod:`experiments.model_cache` (one file named
after a hash of the config, verified on load, written atomically); a rerun with the same config loads
it instead of training.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import optax
from flax import nnx

from experiments import model_cache
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


KIND = "arithmetic_model"


def checkpoint_path(out_dir: pathlib.Path, config: ModelConfig) -> pathlib.Path:
    return model_cache.cache_path(out_dir, KIND, config)


class TrainedModel(NamedTuple):
    model: Transformer
    config: ModelConfig
    losses: list        # training loss every ~1% of the steps (from the run that trained it)
    loaded: bool        # True when read from the checkpoint


def train_or_load(out_dir: pathlib.Path, config: ModelConfig = ModelConfig()) -> TrainedModel:
    """The trained model of ``config``: loaded from ``out_dir`` if cached (and verified), else trained and
    cached."""
    def fit():
        model, losses = train(completion_loss, build(config), problems(config), optimizer(config),
                              config.train_steps, key=jax.random.key(config.seed))
        stride = max(1, len(losses) // 100)
        return model, {"config": config._asdict(), "losses": losses[::stride]}

    cached = model_cache.load_or_train(KIND, config, build, fit, directory=out_dir, fields={"losses"})
    return TrainedModel(cached.model, config, cached.record["losses"], cached.source == "cache")
