"""Compute-matched comparison of a small model with more inference against a larger model.

Snell et al. 2024 (arXiv 2408.03314, Sec. 7): pretraining costs 6·N·D_pre FLOPs and inference
2·N·D_inf; a model M× larger matches the total FLOPs of the small one given
K = M + 3(M − 1)·D_pre / D_inf times more inference tokens.
"""

from __future__ import annotations

from itscale.core import checks


def pretraining_flops(num_params: float, tokens: float) -> float:
    """6·N·D: forward and backward through N parameters for D training tokens."""
    return 6.0 * num_params * tokens


def inference_flops(num_params: float, tokens: float) -> float:
    """2·N·D: one forward pass through N parameters per token."""
    return 2.0 * num_params * tokens


def matched_inference_multiplier(size_ratio: float, pretrain_tokens: float, inference_tokens: float) -> float:
    """K = M + 3(M − 1)·D_pre/D_inf: inference-token multiplier that equalises total FLOPs."""
    m = checks.in_range("size_ratio", size_ratio, 1.0, float("inf"))
    if pretrain_tokens < 0 or inference_tokens <= 0:
        raise ValueError("pretrain_tokens must be >= 0 and inference_tokens > 0, got "
                         f"{pretrain_tokens} and {inference_tokens}")
    return m + 3.0 * (m - 1.0) * pretrain_tokens / inference_tokens
