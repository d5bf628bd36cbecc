"""Scaling: FLOP accounting, compute-matched comparison, power-law and coverage fits."""

from itscale.scaling.compute_matched import (inference_flops, matched_inference_multiplier,
                                             pretraining_flops)
from itscale.scaling.flops import flops_per_call, flops_per_evaluation

__all__ = ["flops_per_call", "flops_per_evaluation", "inference_flops", "matched_inference_multiplier",
           "pretraining_flops"]
