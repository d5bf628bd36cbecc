"""Scaling: FLOP accounting, compute-matched comparison, power-law and coverage fits, and compute
allocated per query by difficulty (difficulty estimates, an exact planner, one compiled program for a
batch of mixed budgets, per-query telemetry)."""

from itscale.scaling.allocator import (RULES, AllocatedQueries, AllocationPlan, Selection, allocate,
                                       allocated_search, masked_select, plan_allocation, uniform_allocation,
                                       width_buckets)
from itscale.scaling.compute_matched import (inference_flops, matched_inference_multiplier,
                                             pretraining_flops)
from itscale.scaling.difficulty import (ScoreStats, agreement_difficulty, answer_agreement,
                                        nearest_calibrated_tier, quantile_edges,
                                        quantile_tiers, score_difficulty, score_stats, tiers_from_edges)
from itscale.scaling.flops import flops_of, flops_per_call, flops_per_evaluation
from itscale.scaling.power_law import PowerLaw, fit_power_law
from itscale.scaling.telemetry import QueryCost, TierSummary, query_cost, tier_summary

__all__ = [
    "RULES", "AllocatedQueries", "AllocationPlan", "PowerLaw", "QueryCost", "ScoreStats", "Selection",
    "TierSummary", "agreement_difficulty", "allocate", "allocated_search", "answer_agreement",
    "fit_power_law", "flops_of", "flops_per_call", "flops_per_evaluation", "inference_flops", "masked_select",
    "matched_inference_multiplier", "nearest_calibrated_tier", "plan_allocation", "pretraining_flops",
    "quantile_edges", "quantile_tiers", "query_cost", "score_difficulty", "score_stats", "tier_summary",
    "tiers_from_edges", "uniform_allocation", "width_buckets",
]
