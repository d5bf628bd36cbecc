"""Reward functions and verifiers: batched over the leading axis and order preserving.

Exact tilts of a Gaussian mixture with their tilted laws (:mod:`~itscale.verifiers.tilts`), a digit
classifier's rewards (:mod:`~itscale.verifiers.digits`), and the arithmetic task's checkers.
"""

from itscale.verifiers import arithmetic, arithmetic_task, digits, tilts
from itscale.verifiers.arithmetic import noisy_verifier
from itscale.verifiers.digits import class_log_prob, class_logit, feature_distance, features, max_class_log_prob
from itscale.verifiers.tilts import Tilt, linear_tilt, quadratic_tilt

__all__ = ["Tilt", "arithmetic", "arithmetic_task", "class_log_prob", "class_logit", "digits", "feature_distance",
           "features", "linear_tilt", "max_class_log_prob", "noisy_verifier", "quadratic_tilt", "tilts"]
