"""FLOPs from XLA's cost analysis, so compute is measured by the compiler, not estimated by hand.

``flops_per_call(fn, *args)`` compiles ``fn`` for the example arguments and reads XLA's FLOP count;
``flops_per_evaluation`` divides by the batch size (one NFE = one sample through the network once),
so the FLOPs of a run are ``stats.nfe * flops_per_evaluation(model, x, t)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from itscale.core.counting import batch_size


def flops_per_call(fn: Callable, *args) -> float:
    """XLA's FLOP count for one call of ``fn`` on these (example or abstract) arguments."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0]
    if not analysis or "flops" not in analysis:
        raise RuntimeError("XLA's cost analysis reported no FLOP count for this function on this backend")
    return float(analysis["flops"])


def flops_per_evaluation(fn: Callable, *args, cost: Callable[..., int] = batch_size) -> float:
    """FLOPs of one network evaluation: a call's FLOPs over its cost in NFE (default: batch size)."""
    return flops_per_call(fn, *args) / cost(*args)
