"""Validation of the (sigma_min, sigma_max) pair shared by the variance-exploding paths."""

from __future__ import annotations

from itscale.core.checks import in_range


def check_noise_levels(sigma_min, sigma_max) -> tuple[float, float]:
    """Return ``(sigma_min, sigma_max)`` as floats if 0 < sigma_min < sigma_max < inf."""
    sigma_min = in_range("sigma_min", sigma_min, 0.0, float("inf"), inclusive=False)
    sigma_max = in_range("sigma_max", sigma_max, 0.0, float("inf"), inclusive=False)
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_max must exceed sigma_min = {sigma_min}, got sigma_max = {sigma_max}")
    return sigma_min, sigma_max
