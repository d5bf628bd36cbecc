"""Reward functions and verifiers: batched over the leading axis and order preserving."""

from itscale.verifiers import arithmetic
from itscale.verifiers.arithmetic import noisy_verifier

__all__ = ["arithmetic", "noisy_verifier"]
