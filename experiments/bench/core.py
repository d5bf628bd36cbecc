"""Core benchmarks: run-loop overhead over the bare network cost, compile time vs budget, retraces.

* overhead: ``its.run`` of ``its.refine.ode(solver="euler")`` on an MLP velocity vs a bare ``lax.scan``
  making the same network calls (the physical limit), batch 64 and 4096; target ≤ 1.05×.
* compile: seconds to trace and compile ``run`` at 1000 steps over 10 steps; target ≤ 1.3×.
* retraces: traces of the step function over 5 calls with new ``params`` values; target 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import itscale as its
from experiments.bench.baselines import bare_loop
from experiments.bench.timing import compile_seconds, time_interleaved
from itscale.core.run import lower

PATH = its.paths.linear()


def mlp_velocity():
    """The 2 -> 256 -> 256 -> 2 NNX MLP velocity of the refine benchmarks, as a pure ``fn(x, t)``."""
    return its.models.as_fn(its.models.MLP(2, width=256, depth=2, rngs=nnx.Rngs(0)))


def overhead_rows(quick: bool) -> list[dict]:
    sampler, steps, rows = its.refine.ode(mlp_velocity(), solver="euler"), 100, []
    for batch in (64, 4096):
        x = jax.random.normal(jax.random.key(1), (batch, 2))
        bare = bare_loop(mlp_velocity(), steps)
        key = jax.random.key(2)
        times = time_interleaved({
            "run": lambda: its.run(sampler, key, x, num_steps=steps).output,
            "bare": lambda: bare(x),
        }, repeats=5 if quick else 21)
        ratio = times["run"] / times["bare"]
        rows.append({"bench": "run-loop overhead (Euler, MLP 2-256-256-2)", "case": f"batch {batch}, "
                     f"{steps} steps", "value": ratio, "unit": "x", "target": "<= 1.05x",
                     "ok": ratio <= 1.05, "note": f"bare {times['bare'] * 1e3:.2f} ms"})
    return rows


def compile_rows(quick: bool) -> list[dict]:
    sampler = its.refine.ode(mlp_velocity(), solver="ddim", path=PATH)
    x, key = jnp.zeros((64, 2)), jax.random.key(0)
    seconds = {n: min(compile_seconds(lambda n=n: lower(sampler, key, x, num_steps=n)) for _ in range(3))
               for n in (10, 100, 1000)}
    return [{"bench": "compile time vs budget (DDIM, MLP)", "case": f"{n} steps / 10 steps",
             "value": seconds[n] / seconds[10], "unit": "x", "target": "<= 1.3x" if n == 1000 else "",
             "ok": seconds[n] / seconds[10] <= 1.3 if n == 1000 else None, "note": f"{seconds[n]:.3f} s"}
            for n in (100, 1000)]


def retrace_rows(quick: bool) -> list[dict]:
    traces = []
    base = its.refine.ode(mlp_velocity(), solver="ddim", path=PATH)

    def step(key, state, ctx, params):
        traces.append(1)
        return base.step(key, state, ctx, params)

    sampler = base._replace(step=step)
    x = jnp.zeros((64, 2))
    for eta in (0.0, 0.5, 1.0, 0.25, 0.75):
        its.run(sampler, jax.random.key(0), x, num_steps=50, params={"eta": eta})
    return [{"bench": "retraces over 5 calls with new params (DDIM eta)", "case": "same budget",
             "value": float(len(traces)), "unit": "traces", "target": "1", "ok": len(traces) == 1, "note": ""}]


def rows(quick: bool = False) -> list[dict]:
    return overhead_rows(quick) + compile_rows(quick) + retrace_rows(quick)


if __name__ == "__main__":
    from experiments.common import markdown_table

    print(markdown_table(rows()))
