"""Particles over devices: shard the leading (particle) axis on a ``jax.sharding.Mesh``.

Every state leaf of a particle method leads with the particle axis, so sharding that axis over a
one-dimensional mesh splits the work evenly. The global operations of particle methods (resampling
gathers, argmax over particles, normalising weights) are written as ordinary ``jax.numpy`` ops on the
whole axis: under ``jit`` XLA's SPMD partitioner inserts the collectives, so the same code runs on
one device or many. Randomness never depends on the layout (per-particle keys come from the particle
index, :func:`itscale.core.split_per_particle`), so a run gives the same answer on one device or
many: the same random draws and discrete decisions (resampling ancestors, argmax), with floating
values equal up to the last bits that XLA's per-device code generation may change (a reduction split
over devices, or a model compiled for a smaller per-device batch, can round differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PARTICLE_AXIS = "particles"


def particle_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = PARTICLE_AXIS) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: all devices) with axis ``axis_name``."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def _axis_name(mesh: Mesh, axis_name: str | None) -> str:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    name = mesh.axis_names[0] if axis_name is None else axis_name
    if name not in mesh.axis_names:
        raise ValueError(f"axis_name {name!r} is not an axis of the mesh; accepted: {mesh.axis_names}")
    return name


def particle_sharding(mesh: Mesh, axis_name: str | None = None) -> NamedSharding:
    """Sharding that splits the leading axis over ``axis_name`` (default: the mesh's first axis)."""
    return NamedSharding(mesh, PartitionSpec(_axis_name(mesh, axis_name)))


def shard_particles(tree, mesh: Mesh, axis_name: str | None = None):
    """Place every leaf of ``tree`` with its leading axis split over the mesh (scalars replicated).

    Raises ``ValueError`` when a leading axis is not divisible by the number of devices on the axis.
    """
    name = _axis_name(mesh, axis_name)
    size = mesh.shape[name]
    split, whole = NamedSharding(mesh, PartitionSpec(name)), NamedSharding(mesh, PartitionSpec())

    def place(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            return jax.device_put(leaf, whole)
        if leaf.shape[0] % size:
            raise ValueError(f"the particle axis ({leaf.shape[0]}) must be divisible by the {size} devices "
                             f"of mesh axis {name!r}")
        return jax.device_put(leaf, split)

    return jax.tree.map(place, tree)


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` whole on every device of ``mesh`` (e.g. a model's weights).

    On CPU devices, which share the host's memory, every device reads one copy: each leaf becomes one
    64-byte aligned host buffer that every device wraps without copying, so the cores share the
    weights in the last-level cache instead of each streaming its own copy. Other devices get a copy
    each. The arrays are read-only views: never donate them to a jitted function.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    whole = NamedSharding(mesh, PartitionSpec())
    devices = list(mesh.devices.flat)
    if any(device.platform != "cpu" for device in devices):
        return jax.device_put(tree, whole)

    def place(leaf):
        host = _aligned_copy(np.asarray(leaf))
        shards = [jax.device_put(host, device) for device in devices]
        return jax.make_array_from_single_device_arrays(host.shape, whole, shards)

    return jax.tree.map(place, tree)


def _aligned_copy(values: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy of ``values`` in a buffer starting on an ``alignment``-byte boundary (XLA:CPU wraps such
    host buffers without copying them)."""
    raw = np.empty(values.nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def write_columns(buffer: jax.Array, columns: jax.Array, values: jax.Array, *, axis: int = 1) -> jax.Array:
    """``buffer[b, ..., columns[b, j], ...] = values[b, ..., j, ...]`` for every row ``b``, the column
    index at ``axis`` (``columns`` (B,) writes one column per row); out-of-range columns are dropped.

    A row-local write: written as a ``vmap`` over rows, it lowers to a scatter whose row axis is a
    batching dimension, which the SPMD partitioner keeps split. The equivalent indexed scatter
    ``buffer.at[arange(B)[:, None], columns]`` makes it all-gather the rows to every device at every
    write.
    """
    if axis < 1:
        raise ValueError(f"axis must be >= 1 (axis 0 is the row axis), got {axis}")

    def write_row(row, row_columns, row_values):
        index = (slice(None),) * (axis - 1) + (row_columns,)
        return row.at[index].set(row_values.astype(row.dtype), mode="drop")

    return jax.vmap(write_row)(buffer, columns, values)


def gather_particles(tree, indices):
    """``leaf[indices]`` along the particle axis of every leaf: the resampling move.

    A global gather: on a sharded particle axis XLA moves the chosen particles between devices.
    """
    return jax.tree.map(lambda leaf: leaf.at[indices].get(mode="promise_in_bounds"), tree)


def global_argmax(values) -> jax.Array:
    """Index of the largest entry along the leading (particle) axis, over all devices; ties and NaN
    as ``jnp.argmax`` (first maximum; NaN counts as the maximum)."""
    return jnp.argmax(values, axis=0)
