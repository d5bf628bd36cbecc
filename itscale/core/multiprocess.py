"""Particles across processes: one particle axis sharded over the devices of every process.

JAX's multi-controller runtime runs one Python process per host (or here, several processes on one
machine); every process runs the same program on its own devices, and ``jax.jit`` over arrays whose
shards live on all processes' devices compiles one SPMD program whose collectives (all-reduce,
all-gather, collective-permute) cross process boundaries: gloo over TCP between CPU processes, ICI/DCN
on a TPU pod slice, NCCL between GPU hosts. The particle methods need nothing else: their global
operations (ESS, log-mean weights, the cumulative weights of resampling, the ancestor gathers) are
ordinary ``jax.numpy`` ops on the whole particle axis (:mod:`itscale.core.sharding`), so ``its.run``
runs unchanged on global arrays and the same key gives the same particles as one process.

The contract of this module:

* :func:`initialize` starts the runtime (before any other JAX call), with CPU collectives and a
  number of CPU devices per process when asked; without arguments it is ``jax.distributed.initialize()``
  (cloud TPU and SLURM / Open MPI clusters find the coordinator themselves).
* :func:`global_mesh` is the one-dimensional particle mesh over every process's devices, process 0's
  first, so each process holds one contiguous block of particles.
* :func:`shard_global` places a value that every process holds whole (e.g. noise drawn from the same
  key) with its particle axis split over the mesh; each process transfers only its own block.
  :func:`shard_process_local` assembles the global array from each process's own block instead.
* :func:`replicate_global` places a value whole on every device (keys, hyper-parameters, weights).
* :func:`gather` brings global arrays back to every process as host ``numpy`` arrays (a collective:
  every process must call it).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from itscale.core import checks
from itscale.core.sharding import PARTICLE_AXIS, particle_mesh

CPU_COLLECTIVES = ("gloo", "mpi", "none")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_count: int | None = None,
               cpu_collectives: str = "gloo") -> None:
    """Start JAX's multi-process runtime; call it first, before any other JAX computation.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service; None lets JAX find it
        (cloud TPU, SLURM, Open MPI), as do ``num_processes`` and ``process_id``.
      num_processes: number of processes taking part.
      process_id: this process's index in [0, num_processes).
      local_device_count: number of CPU devices of this process (``jax_num_cpu_devices``); None keeps
        the platform's own (one CPU device, or the accelerators of the host).
      cpu_collectives: implementation of the collectives between CPU processes (``"gloo"``, ``"mpi"``;
        ``"none"`` for a run whose CPU computations never cross processes). Accelerator collectives are
        the platform's own.
    """
    checks.choice("cpu_collectives", cpu_collectives, CPU_COLLECTIVES)
    if local_device_count is not None:
        checks.positive_int("local_device_count", local_device_count)
    if num_processes is not None:
        checks.positive_int("num_processes", num_processes)
        if checks.positive_int("process_id", process_id, minimum=0) >= num_processes:
            raise ValueError(f"process_id must be in [0, num_processes) = [0, {num_processes}), got {process_id}")
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def global_mesh(axis_name: str = PARTICLE_AXIS) -> Mesh:
    """The particle mesh over all processes' devices, ordered by (process, device id): process p
    holds the p-th contiguous block of the particle axis."""
    return particle_mesh(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)), axis_name)


def _particle_sharding(mesh: Mesh, leaf) -> NamedSharding:
    """Split the leading axis over the mesh's first axis; scalars replicated."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if np.ndim(leaf) == 0:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def _divisible(name: str, size: int, parts: int, what: str) -> None:
    if size % parts:
        raise ValueError(f"{name} ({size}) must be divisible by the {parts} {what}")


def shard_global(tree, mesh: Mesh):
    """Every leaf of ``tree`` (the same whole value on every process) as a global array with its
    leading axis split over ``mesh`` (scalars replicated); each process copies only the rows of its
    own devices. Raises ``ValueError`` when a leading axis is not divisible by the mesh's devices."""

    def place(leaf):
        host = np.asarray(leaf)
        sharding = _particle_sharding(mesh, host)
        if host.ndim:
            _divisible("the particle axis", host.shape[0], mesh.devices.size, "devices of the mesh")
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)


def shard_process_local(tree, mesh: Mesh):
    """Every leaf of ``tree`` (this process's block of particles, the same shape on every process) as
    one global array whose particle axis is the blocks of processes 0, 1, ... in order."""
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def place(leaf):
        host = np.asarray(leaf)
        if host.ndim == 0:
            raise ValueError("shard_process_local needs leaves with a particle axis; use replicate_global "
                             "for scalars")
        _divisible("the process's particle block", host.shape[0], local_devices, "devices of this process")
        global_shape = (host.shape[0] * jax.process_count(),) + host.shape[1:]
        return jax.make_array_from_process_local_data(_particle_sharding(mesh, host), host, global_shape)

    return jax.tree.map(place, tree)


def replicate_global(tree, mesh: Mesh):
    """Every leaf of ``tree`` (the same value on every process, e.g. a PRNG key or weights) whole on
    every device of ``mesh``."""
    whole = NamedSharding(mesh, PartitionSpec())

    def place(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = replicate_global(jax.random.key_data(leaf), mesh)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, whole, lambda index: host[index])

    return jax.tree.map(place, tree)


def gather(tree):
    """Every leaf of ``tree`` (global arrays) as the whole host ``numpy`` value, on every process.

    A collective: every process must call it with the same structure."""
    return multihost_utils.process_allgather(tree, tiled=True)
