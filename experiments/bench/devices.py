"""One CPU device per core, for benchmarks that split their batch over the cores.

XLA:CPU runs a small matmul (a 64 x 256 x 256 layer) on one thread; split over one JAX CPU device
per core (``jax_num_cpu_devices``), each device runs its rows on its own core. The option must be set
before JAX starts its backend, so the entry points call :func:`use_every_core` first; inside a process
whose backend already started (the test suite) the benchmarks keep one device and skip their split rows.
"""

from __future__ import annotations

import os

import jax

from itscale.core import sharding


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core() -> int:
    """Ask for one CPU device per core if JAX's backend has not started yet; the CPU devices there are."""
    try:
        jax.config.update("jax_num_cpu_devices", cores())
    except RuntimeError:  # the backend already runs: its devices stay as they are
        pass
    return len(jax.devices("cpu"))


def core_mesh() -> jax.sharding.Mesh | None:
    """A particle mesh over the CPU devices, or None when there is only one."""
    devices = jax.devices("cpu")
    return sharding.particle_mesh(devices) if len(devices) > 1 else None
