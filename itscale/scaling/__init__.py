"""Scaling: FLOP accounting, compute-matched comparison, power-law and coverage fits."""

from itscale.scaling.compute_matched import (inference_flops, matched_inference_multiplier,
                                             pretraining_flops)
from itscale.scaling.flops import flops_per_call, flops_per_evaluation
from itscale.scaling.power_law import PowerLaw, fit_power_law

__all__ = ["PowerLaw", "fit_power_law", "flops_per_call", "flops_per_evaluation", "inference_flops",
           "matched_inference_multiplier", "pretraining_flops"]
