"""Timing helpers for benchmarks: warm up, block on results, take the median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_fn(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` (its outputs blocked on) after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int = 5,
                     warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, alternating between them so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def compile_seconds(lowering: Callable[[], object]) -> float:
    """Seconds to trace, lower (``lowering()``, e.g. ``itscale.core.run.lower(...)``) and compile from
    cold caches, without running."""
    jax.clear_caches()
    start = time.perf_counter()
    lowering().compile()
    return time.perf_counter() - start
