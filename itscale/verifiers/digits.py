"""Rewards on 8×8 digits from a trained classifier f (:class:`itscale.models.digits.Classifier`).

* :func:`class_log_prob`: r(x) = log p(y = c | x) = f_c(x) − logsumexp_j f_j(x), the reward of
  classifier-guided search (the log-likelihood of a classifier as a verifier, as in FK steering,
  Singhal et al. 2025, arXiv 2501.06848). Bounded above by 0: once class c dominates, more of it gains
  nothing.
* :func:`class_logit`: r(x) = f_c(x), the unnormalised logit: the reward that is cheap to hack, for
  over-optimisation studies (Gao et al. 2022, arXiv 2210.10760). It is unbounded: a silu network grows
  about linearly far from its data, so moving x off the pixel range [−1, 1] along a direction that raises
  every logit together raises f_c without end, while p(y = c | x) need not grow and the image stops
  looking like a digit. Search that maximises it drifts off the data manifold; measure the drift with the
  two functions below.
* :func:`max_class_log_prob`: r(x) = max_c log p(y = c | x), how confidently the classifier reads x as
  some digit: an unconditional reward (any class will do).
* :func:`features`: φ(x), the classifier's penultimate layer (batch, width); :func:`feature_distance`:
  min_j ‖φ(x) − φ(x_j)‖ to reference digits x_j (e.g. held-out digits of class c), an evaluation metric
  (lower is closer to real digits; its negative is a reward).

Each constructor returns a Flax NNX module that shares the classifier's variables: pass it to a search
(``best_of_n``, ``smc``) as it is and its weights reach the compiled loop as traced arguments; the target
class and the references are traced too, so a sweep over classes never recompiles. Every call maps
x (batch, 64) to (batch,) (features: (batch, width)) row by row, order preserving, and is counted as
``kind="verifier"`` (one per row; once only when a search counts it as well).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from itscale.core import counting
from itscale.models.digits import Classifier


class _OnClassifier(nnx.Module):
    """A function of a classifier's outputs, counted as a verifier call per row of x."""

    def __init__(self, classifier: Classifier):
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be an itscale.models.digits.Classifier, got "
                            f"{type(classifier).__name__}")
        self.classifier = classifier

    def __call__(self, x) -> jax.Array:
        return counting.counted(self.evaluate, kind="verifier")(jnp.asarray(x))

    def evaluate(self, x) -> jax.Array:
        raise NotImplementedError


class _ClassReward(_OnClassifier):
    def __init__(self, classifier: Classifier, target):
        super().__init__(classifier)
        target = np.asarray(target)
        if target.shape != () or not np.issubdtype(target.dtype, np.integer) or not (
                0 <= int(target) < classifier.num_classes):
            raise ValueError(f"target must be an integer class in [0, {classifier.num_classes}), "
                             f"got {target!r}")
        self.target = nnx.Variable(jnp.asarray(target, jnp.int32))

    def _pick(self, scores) -> jax.Array:
        return jnp.take(scores, self.target[...], axis=-1)


class ClassLogProb(_ClassReward):
    """x -> log p(y = target | x) = log_softmax(f(x))_target, (batch,)."""

    def evaluate(self, x) -> jax.Array:
        return self._pick(jax.nn.log_softmax(self.classifier(x), axis=-1))


class ClassLogit(_ClassReward):
    """x -> f_target(x), the unnormalised logit (hackable; see the module docstring), (batch,)."""

    def evaluate(self, x) -> jax.Array:
        return self._pick(self.classifier(x))


class MaxClassLogProb(_OnClassifier):
    """x -> max_c log p(y = c | x) = max_c log_softmax(f(x))_c, (batch,)."""

    def evaluate(self, x) -> jax.Array:
        return jnp.max(jax.nn.log_softmax(self.classifier(x), axis=-1), axis=-1)


class Features(_OnClassifier):
    """x -> φ(x), the classifier's penultimate features, (batch, width)."""

    def evaluate(self, x) -> jax.Array:
        return self.classifier.features(x)


class FeatureDistance(_OnClassifier):
    """x -> min_j ‖φ(x) − φ(x_j)‖ over the references x_j, (batch,)."""

    def __init__(self, classifier: Classifier, references):
        super().__init__(classifier)
        references = jnp.asarray(references)
        if references.ndim != 2 or references.shape[0] == 0 or references.shape[1] != classifier.dim:
            raise ValueError(f"references must have shape (n, {classifier.dim}) with n >= 1, "
                             f"got {references.shape}")
        self.references = nnx.Variable(references)

    def evaluate(self, x) -> jax.Array:
        phi, ref = self.classifier.features(x), self.classifier.features(self.references[...].astype(x.dtype))
        center = jnp.mean(ref, axis=0)                 # ‖a‖² − 2 a·b + ‖b‖² about the references' mean:
        phi, ref = phi - center, ref - center          # less cancellation in low precision
        squared = jnp.sum(phi**2, -1)[:, None] - 2.0 * phi @ ref.T + jnp.sum(ref**2, -1)[None, :]
        return jnp.sqrt(jnp.maximum(jnp.min(squared, axis=-1), 0.0))


def class_log_prob(classifier: Classifier, target) -> ClassLogProb:
    """The reward log p(y = target | x) of ``classifier``."""
    return ClassLogProb(classifier, target)


def class_logit(classifier: Classifier, target) -> ClassLogit:
    """The hackable reward f_target(x), the unnormalised logit of ``classifier``."""
    return ClassLogit(classifier, target)


def max_class_log_prob(classifier: Classifier) -> MaxClassLogProb:
    """The unconditional reward max_c log p(y = c | x) of ``classifier``."""
    return MaxClassLogProb(classifier)


def features(classifier: Classifier) -> Features:
    """The penultimate features φ(x) of ``classifier``."""
    return Features(classifier)


def feature_distance(classifier: Classifier, references) -> FeatureDistance:
    """min_j ‖φ(x) − φ(x_j)‖ to ``references`` (n, 64), e.g. held-out digits of one class."""
    return FeatureDistance(classifier, references)
