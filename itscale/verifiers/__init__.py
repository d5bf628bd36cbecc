"""Reward functions and verifiers: batched over the leading axis and order preserving."""

from itscale.verifiers import arithmetic, arithmetic_task
from itscale.verifiers.arithmetic import noisy_verifier

__all__ = ["arithmetic", "arithmetic_task", "noisy_verifier"]
