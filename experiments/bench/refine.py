"""Refinement benchmarks: every ODE solver of ``its.refine.ode`` on a 2 -> 256 -> 256 -> 2 NNX MLP velocity.

Per solver, at batch 64 and 4096, ratios measured inside one interleaved run:

* ``its.run`` / bare network loop: a ``lax.scan`` making the same number of MLP calls with nothing but an
  axpy around them (the physical limit); target <= 1.10x. At batch 64 also with the batch split over
  one CPU device per core (:mod:`experiments.bench.devices`): XLA runs the 64 x 256 x 256 matmul on
  one thread at that core's peak, so splitting the rows is the only way to use the other cores.
* ``its.run`` / diffrax with the same fixed-step solver at equal NFE (Euler, midpoint, Heun, RK4 through a
  custom Butcher tableau); target parity (<= 1.05x, the timing noise).
* PyTorch eager loop of the same solver and the same MLP weights / ``its.run``
  (:mod:`experiments.bench.torch_peers`, checked to compute the same values by
  ``tests/refine/test_ode_torch_peers.py``); target >= 2x at batch 64 for its.run with the batch split
  over the cores (both sides then use every core; the one-device ratio is reported beside it).
  PyTorch is timed in blocks of its own after the interleaved JAX timings (either framework's
  spinning worker threads slow the other's next call: PyTorch Euler at batch 64 measured 1.5x slower
  interleaved with JAX calls than alone),
  once with one thread (what XLA uses for this loop at batch 64: all its kernels run on one thread of
  the profile) and once with its default thread count; the faster median counts, so the peer runs at
  its best. On a shared machine the default two OpenMP threads can be 20x slower than one (a descheduled
  worker stalls every parallel region), which measured contention rather than PyTorch.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import itscale as its
from experiments.bench.baselines import bare_loop
from experiments.bench.devices import core_mesh, use_every_core
from experiments.bench.timing import time_interleaved
from itscale.models.mlp import MLP, as_fn
from itscale.refine import SOLVERS

try:  # the PyTorch peer is an optional extra (pip install -e ".[bench]")
    import torch

    from experiments.bench import torch_peers
except ImportError:
    torch = None

PATH = its.paths.linear()
GRID = its.paths.Grid("uniform")


class RK4(diffrax.AbstractERK):
    """The classical RK4 tableau for diffrax (which ships no fixed-step RK4)."""

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]), b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]), b_error=np.zeros(4),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])))
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


DIFFRAX = {"euler": diffrax.Euler, "midpoint": diffrax.Midpoint, "heun": diffrax.Heun, "rk4": RK4}


def diffrax_loop(velocity, solver: str, num_steps: int):
    """diffrax fixed-step solve over the same uniform grid, saving only the end point."""
    t_max, t_min = GRID.t_max, GRID.t_min
    term = diffrax.ODETerm(lambda t, y, args: velocity(y, t))

    @jax.jit
    def loop(x):
        return diffrax.diffeqsolve(term, DIFFRAX[solver](), t_max, t_min, (t_min - t_max) / num_steps, x,
                                   saveat=diffrax.SaveAt(t1=True), max_steps=num_steps).ys[0]

    return loop


def torch_seconds(solver: str, model, x, times, repeats: int) -> tuple[float, int]:
    """Median seconds of the PyTorch peer at its best thread count (see the module docstring), and that
    thread count."""
    torch_model, torch_x = torch_peers.TorchMLP.from_nnx(model), torch.from_numpy(np.array(x))
    return torch_peers.best_thread_seconds(lambda: torch_peers.sample(solver, torch_model, torch_x, times, PATH),
                                           repeats)


def solver_rows(model, solver: str, batch: int, num_steps: int, repeats: int, mesh=None) -> list[dict]:
    """Rows of one solver at one batch size; with ``mesh``, also its.run and the bare loop with the batch
    split over the mesh's devices (one CPU device per core)."""
    velocity = as_fn(model)
    x = jax.random.normal(jax.random.key(1), (batch, 2), jnp.float32)
    sampler, key = its.refine.ode(velocity, solver, grid=GRID, path=PATH), jax.random.key(2)
    calls = num_steps * SOLVERS[solver].nfe_per_step
    times = np.asarray(GRID.times(num_steps, dtype=jnp.float32))
    bare = bare_loop(velocity, calls)
    fns = {"its": lambda: its.run(sampler, key, x, num_steps=num_steps).output, "bare": lambda: bare(x)}
    if solver in DIFFRAX:
        solve = diffrax_loop(velocity, solver, num_steps)
        fns["diffrax"] = lambda: solve(x)
    if mesh is not None:  # the key replicated once, not copied to every device at every call
        split, split_key = its.core.sharding.shard_particles((x, key), mesh)
        fns["its_split"] = lambda: its.run(sampler, split_key, split, num_steps=num_steps).output
        fns["bare_split"] = lambda: bare(split)
    seconds = time_interleaved(fns, repeats=repeats)
    if torch is not None:
        seconds["torch"], torch_threads = torch_seconds(solver, model, x, times, repeats)
    case = f"{solver}, batch {batch}, {num_steps} steps ({calls} NFE/sample)"
    split_case = f"{case}, batch split over {mesh.size if mesh else 0} CPU devices"
    overhead = seconds["its"] / seconds["bare"]
    rows = [{"bench": "refine: its.run / bare MLP loop", "case": case, "value": overhead, "unit": "x",
             "target": "<= 1.10x", "ok": overhead <= 1.10, "note": f"its {seconds['its'] * 1e3:.2f} ms"}]
    if mesh is not None:
        overhead = seconds["its_split"] / seconds["bare_split"]
        rows.append({"bench": "refine: its.run / bare MLP loop", "case": split_case, "value": overhead,
                     "unit": "x", "target": "", "ok": None,
                     "note": f"its {seconds['its_split'] * 1e3:.2f} ms; includes the fixed dispatch of a "
                             "program on every device with all its outputs"})
    if "diffrax" in seconds:
        ratio = seconds["its"] / seconds["diffrax"]
        rows.append({"bench": "refine: its.run / diffrax fixed step", "case": case, "value": ratio,
                     "unit": "x", "target": "<= 1.05x", "ok": ratio <= 1.05,
                     "note": f"diffrax {seconds['diffrax'] * 1e3:.2f} ms"})
    if torch is None:
        rows.append({"bench": "refine: PyTorch eager / its.run", "case": case, "value": None, "unit": "x",
                     "target": "", "ok": None, "note": "skipped: torch not installed (.[bench] extra)"})
        return rows
    # The >= 2x target at batch 64 applies to the fastest way to run its.run on this machine: its batch
    # split over the cores when there are several CPU devices, else one device.
    torch_note = f"torch {seconds['torch'] * 1e3:.2f} ms ({torch_threads} thread{'s' * (torch_threads > 1)})"
    for name, label in (("its", case), ("its_split", split_case)):
        if name not in seconds:
            continue
        speedup = seconds["torch"] / seconds[name]
        targeted = batch == 64 and (name == "its_split" or mesh is None)
        rows.append({"bench": "refine: PyTorch eager / its.run", "case": label, "value": speedup, "unit": "x",
                     "target": ">= 2x" if targeted else "", "ok": speedup >= 2.0 if targeted else None,
                     "note": torch_note})
    return rows


def rows(quick: bool = False) -> list[dict]:
    """Batch 64: 100 steps (50 quick), enough for the loop to dominate the per-call dispatch; batch 4096:
    20 steps (5 quick), where each call is already long (9 repeats: medians of 5 varied by 10%)."""
    model = MLP(2, width=256, depth=2, rngs=nnx.Rngs(0))
    settings = {64: (50, 7) if quick else (100, 15), 4096: (5, 3) if quick else (20, 9)}
    out = []
    for batch, (num_steps, repeats) in settings.items():
        mesh = core_mesh() if batch == 64 else None   # batch 4096 already keeps every core busy
        for solver in SOLVERS:
            out += solver_rows(model, solver, batch, num_steps, repeats, mesh)
    return out


if __name__ == "__main__":
    import sys

    from experiments.common import markdown_table

    use_every_core()
    print(markdown_table(rows(quick="--quick" in sys.argv)))
