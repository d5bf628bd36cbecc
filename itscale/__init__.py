"""itscale: pure-functional, jit-compiled sampler transforms for inference-time scaling.

``import itscale as its``; the core names (``its.Sampler``, ``its.run``, ``its.particles``, ...) live
at the top level, the rest in subpackages: ``its.paths``, ``its.models``, ``its.refine``,
``its.search``, ``its.tokens``, ``its.hybrid`` (masked / discrete diffusion over tokens),
``its.verifiers``, ``its.scaling``.
"""

from itscale import core, hybrid, models, paths, refine, scaling, search, tokens, verifiers
from itscale.core import (Result, Sampler, SaveAt, Stats, StepContext, Trace, chain, counted, particles,
                          predictor_corrector, run)

__version__ = "0.1.0"

__all__ = [
    "Result", "Sampler", "SaveAt", "Stats", "StepContext", "Trace", "chain", "core", "counted", "hybrid", "models",
    "particles", "paths", "predictor_corrector", "refine", "run", "scaling", "search", "tokens", "verifiers",
]
