"""Real data for the width studies: scikit-learn's 8×8 digits, a flow-matching model and a classifier.

Data: the 1,797 handwritten digits of scikit-learn (``sklearn.datasets.load_digits``, the UCI optical
digits of Alpaydin & Kaynak 1998; shipped with scikit-learn, no download). Pixels p ∈ {0, …, 16} are
scaled to x = p / 8 − 1 ∈ [−1, 1], 64 features; :class:`Split` fixes a stratified train / held-out split.

Flow model (Lipman et al. 2023, arXiv 2210.02747; Liu et al. 2023, arXiv 2209.03003): the
time-conditioned :class:`itscale.models.MLP` u_θ(x_t, t) regresses the velocity of the linear path
x_t = (1 − t) x₀ + t ε, u = α̇ x₀ + σ̇ ε = ε − x₀, with the loss E_{t~U(0,1), x₀, ε} ‖u_θ(x_t, t) − u‖² / d.
Unconditional; sampled with ``its.refine.ode(model, path=its.paths.linear())`` from t = 1 to 0.

Classifier: an MLP 64 → width → … → width → 10 with silu units, trained on the cross-entropy with
Gaussian input noise (std ``input_noise``, so it also reads slightly noisy samples); ``features(x)`` is
the last hidden layer (the penultimate representation).

Both train with :func:`itscale.models.training.train` (AdamW, warm-up + cosine schedule, gradient clipping),
from the config's seed only: the same config gives the same weights and losses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from itscale.core import checks
from itscale.models.mlp import MLP
from itscale.models.training import train
from itscale.paths.linear import linear
from itscale.paths.path import Path

DIM = 64
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Split:
    """A stratified split: ``holdout_fraction`` of each class held out, shuffled by ``seed``."""

    holdout_fraction: float = 0.2
    seed: int = 0


class DigitsData(NamedTuple):
    """float32 images (n, 64) in [−1, 1] and int32 labels (n,), train and held out."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_digits(split: Split = Split()) -> DigitsData:
    """The digits scaled to [−1, 1] (x = p / 8 − 1), split by ``split`` (deterministic)."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    checks.in_range("holdout_fraction", split.holdout_fraction, 0.0, 1.0, inclusive=False)
    bunch = sklearn_digits()
    x = (bunch.data / 8.0 - 1.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=split.holdout_fraction,
                                                        random_state=split.seed, stratify=y)
    return DigitsData(train_x, train_y, test_x, test_y)


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Architecture (:class:`itscale.models.MLP` 64 → width^depth → 64) and optimisation of the flow."""

    width: int = 512
    depth: int = 2
    time_features: int = 8
    num_steps: int = 6000
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    split: Split = Split()


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture (64 → width^depth → 10) and optimisation of the classifier."""

    width: int = 256
    depth: int = 2
    num_steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-3
    input_noise: float = 0.1
    seed: int = 0
    split: Split = Split()


class Classifier(nnx.Module):
    """``Classifier(dim, num_classes, *, width, depth, rngs)``: x (batch, dim) -> logits (batch, classes)."""

    def __init__(self, dim: int = DIM, num_classes: int = NUM_CLASSES, *, width: int = 256, depth: int = 2,
                 rngs: nnx.Rngs):
        self.dim = checks.positive_int("dim", dim)
        self.num_classes = checks.positive_int("num_classes", num_classes, minimum=2)
        sizes = [dim] + [checks.positive_int("width", width)] * checks.positive_int("depth", depth)
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def features(self, x) -> jax.Array:
        """The last hidden layer, (batch, width)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {x.shape}")
        h = x
        for layer in self.hidden:
            h = jax.nn.silu(layer(h))
        return h

    def __call__(self, x) -> jax.Array:
        return self.head(self.features(x))


def flow_model(config: FlowConfig) -> MLP:
    """The untrained flow network of ``config`` (initialised from ``config.seed``)."""
    return MLP(DIM, width=config.width, depth=config.depth, time_features=config.time_features,
               rngs=nnx.Rngs(config.seed))


def classifier_model(config: ClassifierConfig) -> Classifier:
    """The untrained classifier of ``config`` (initialised from ``config.seed``)."""
    return Classifier(width=config.width, depth=config.depth, rngs=nnx.Rngs(config.seed))


def flow_matching_loss(model, x0, key, path: Path = linear()) -> jax.Array:
    """Mean over the batch and coordinates of (u_θ(x_t, t) − α̇ x₀ − σ̇ ε)², t ~ U(0, 1), ε ~ N(0, I)."""
    key_t, key_eps = jax.random.split(key)
    t = jax.random.uniform(key_t, (x0.shape[0],), x0.dtype)
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    tb = t[:, None]
    x_t = path.alpha(tb) * x0 + path.sigma(tb) * eps
    target = path.alpha_dot(tb) * x0 + path.sigma_dot(tb) * eps
    return jnp.mean((model(x_t, t) - target) ** 2)


def classification_loss(model: Classifier, batch, key, input_noise=0.0) -> jax.Array:
    """Mean cross-entropy −log softmax(f(x + s·ξ))_y, ξ ~ N(0, I), s = ``input_noise``."""
    x, y = batch
    noisy = x + input_noise * jax.random.normal(key, x.shape, x.dtype)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model(noisy), y))


def _optimizer(learning_rate: float, weight_decay: float, num_steps: int) -> optax.GradientTransformation:
    warmup = min(100, num_steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, num_steps, 0.02 * learning_rate)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))


def train_flow(config: FlowConfig, data: DigitsData) -> tuple[MLP, np.ndarray]:
    """Train the flow of ``config`` on ``data.train_x``; returns the model and the loss of every step."""
    num_steps = checks.positive_int("num_steps", config.num_steps)
    return train(flow_matching_loss, flow_model(config), jnp.asarray(data.train_x),
                 _optimizer(config.learning_rate, config.weight_decay, num_steps), num_steps,
                 batch_size=config.batch_size, key=jax.random.key(config.seed))


def train_classifier(config: ClassifierConfig, data: DigitsData) -> tuple[Classifier, np.ndarray]:
    """Train the classifier of ``config`` on the training split; returns the model and the step losses."""
    num_steps = checks.positive_int("num_steps", config.num_steps)
    loss = functools.partial(classification_loss, input_noise=config.input_noise)
    return train(loss, classifier_model(config), (jnp.asarray(data.train_x), jnp.asarray(data.train_y)),
                 _optimizer(config.learning_rate, config.weight_decay, num_steps), num_steps,
                 batch_size=config.batch_size, key=jax.random.key(config.seed))


def epoch_means(losses, steps_per_epoch: int) -> np.ndarray:
    """Per-epoch means of per-step losses (the last epoch may be partial)."""
    steps_per_epoch = checks.positive_int("steps_per_epoch", steps_per_epoch)
    losses = np.asarray(losses, dtype=np.float64)
    chunks = np.split(losses, range(steps_per_epoch, len(losses), steps_per_epoch))
    return np.array([chunk.mean() for chunk in chunks])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps that draw as many examples as the training split holds: ⌈n / batch_size⌉."""
    return math.ceil(num_examples / batch_size)


@functools.partial(jax.jit, static_argnums=3)
def _flow_loss_over(model, x0, key, repeats):
    keys = jax.random.split(key, repeats)
    return jnp.mean(jax.vmap(lambda k: flow_matching_loss(model, x0, k))(keys))


def heldout_flow_loss(model: MLP, x0, *, key=None, repeats: int = 16) -> float:
    """The flow-matching loss on ``x0`` averaged over ``repeats`` draws of (t, ε) (default key 0)."""
    key = jax.random.key(0) if key is None else key
    return float(_flow_loss_over(model, jnp.asarray(x0), key, checks.positive_int("repeats", repeats)))


@jax.jit
def _classifier_scores(model, x, y):
    logits = model(x)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return jnp.mean(jnp.argmax(logits, axis=-1) == y), loss


def classifier_metrics(model: Classifier, x, y) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    accuracy, loss = _classifier_scores(model, jnp.asarray(x), jnp.asarray(y))
    return {"accuracy": float(accuracy), "loss": float(loss)}
