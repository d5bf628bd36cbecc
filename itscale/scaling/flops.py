"""FLOPs from XLA's cost analysis, so compute is measured by the compiler, not estimated by hand.

``flops_per_call(fn, *args)`` compiles ``fn`` for the example arguments and reads XLA's FLOP count;
``flops_per_evaluation`` divides by the batch size (one NFE = one sample through the network once),
so the FLOPs of a run are ``stats.nfe * flops_per_evaluation(model, x, t)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from itscale.core.counting import batch_size


def flops_of(lowered: jax.stages.Lowered, *, compiled: bool = True) -> float:
    """XLA's FLOP count of a lowered program: of its compiled form (after XLA's optimisations), or with
    ``compiled=False`` of the lowered HLO (no compilation; fusion and layout passes are not counted).
    A ``lax.scan`` or ``while_loop`` body is counted once, whatever its trip count."""
    analysis = (lowered.compile() if compiled else lowered).cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0]
    if not analysis or "flops" not in analysis:
        raise RuntimeError("XLA's cost analysis reported no FLOP count for this function on this backend")
    return float(analysis["flops"])


def flops_per_call(fn: Callable, *args) -> float:
    """XLA's FLOP count for one call of ``fn`` on these (example or abstract) arguments."""
    return flops_of(jax.jit(fn).lower(*args))


def flops_per_evaluation(fn: Callable, *args, cost: Callable[..., int] = batch_size) -> float:
    """FLOPs of one network evaluation: a call's FLOPs over its cost in NFE (default: batch size)."""
    return flops_per_call(fn, *args) / cost(*args)
