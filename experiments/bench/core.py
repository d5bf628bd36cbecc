"""Core benchmarks: run-loop overhead over the bare network cost, compile time vs budget, retraces.

* overhead: ``its.run`` of an Euler sampler on an MLP velocity vs a bare ``lax.scan`` making the same
  network calls (the physical limit), batch 64 and 4096; target ≤ 1.05×.
* compile: seconds to compile ``run`` at 1000 steps over 10 steps; target ≤ 1.3×.
* retraces: traces of the step function over 5 calls with new ``params`` values; target 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import itscale as its
from experiments.bench.timing import compile_seconds, time_interleaved
from itscale.core.run import _run


def mlp_velocity(key, dim: int = 2, width: int = 256):
    """A random 3-layer MLP velocity ``fn(x, t)`` (time concatenated to the input)."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w1": jax.random.normal(k1, (dim + 1, width)) / jnp.sqrt(dim + 1.0), "b1": jnp.zeros(width),
        "w2": jax.random.normal(k2, (width, width)) / jnp.sqrt(width), "b2": jnp.zeros(width),
        "w3": jax.random.normal(k3, (width, dim)) / jnp.sqrt(width), "b3": jnp.zeros(dim),
    }

    def velocity(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]
        h = jax.nn.silu(jnp.concatenate([x, t], axis=1) @ params["w1"] + params["b1"])
        h = jax.nn.silu(h @ params["w2"] + params["b2"])
        return h @ params["w3"] + params["b3"]

    return velocity


def euler_sampler(velocity) -> its.Sampler:
    """Euler on a uniform grid t: 1 -> 0, written against the core API only."""
    velocity = its.counted(velocity)

    def step(key, x, ctx, params):
        dt = 1.0 / ctx.num_steps
        t = 1.0 - ctx.step * dt
        return x - dt * params["scale"] * velocity(x, t), {}

    return its.Sampler(lambda key, x, params: x, step, lambda x: x, {"scale": 1.0})


def bare_scan(velocity, num_steps: int):
    """The same network calls with nothing around them."""

    @jax.jit
    def loop(x):
        dt = 1.0 / num_steps

        def body(x, i):
            return x - dt * velocity(x, 1.0 - i * dt), None

        return lax.scan(body, x, jnp.arange(num_steps))[0]

    return loop


def overhead_rows(quick: bool) -> list[dict]:
    velocity = mlp_velocity(jax.random.key(0))
    sampler, steps, rows = euler_sampler(velocity), 100, []
    for batch in (64, 4096):
        x = jax.random.normal(jax.random.key(1), (batch, 2))
        bare = bare_scan(velocity, steps)
        key = jax.random.key(2)
        times = time_interleaved({
            "run": lambda: its.run(sampler, key, x, num_steps=steps).output,
            "bare": lambda: bare(x),
        }, repeats=5 if quick else 15)
        ratio = times["run"] / times["bare"]
        rows.append({"bench": "run-loop overhead (Euler, MLP 2-256-256-2)", "case": f"batch {batch}, "
                     f"{steps} steps", "value": ratio, "unit": "x", "target": "<= 1.05x",
                     "ok": ratio <= 1.05, "note": f"bare {times['bare'] * 1e3:.2f} ms"})
    return rows


def compile_rows(quick: bool) -> list[dict]:
    sampler = euler_sampler(mlp_velocity(jax.random.key(0)))._replace(params=None)
    x, key, params = jnp.zeros((64, 2)), jax.random.key(0), {"scale": jnp.asarray(1.0)}
    seconds = {n: min(compile_seconds(_run, sampler, n, None, key, x, params) for _ in range(3))
               for n in (10, 100, 1000)}
    return [{"bench": "compile time vs budget", "case": f"{n} steps / 10 steps", "value": seconds[n] / seconds[10],
             "unit": "x", "target": "<= 1.3x" if n == 1000 else "", "ok": seconds[n] / seconds[10] <= 1.3
             if n == 1000 else None, "note": f"{seconds[n]:.3f} s"} for n in (100, 1000)]


def retrace_rows(quick: bool) -> list[dict]:
    traces = []
    base = euler_sampler(mlp_velocity(jax.random.key(0)))

    def step(key, x, ctx, params):
        traces.append(1)
        return base.step(key, x, ctx, params)

    sampler = base._replace(step=step)
    x = jnp.zeros((64, 2))
    for scale in (1.0, 0.5, 2.0, 3.0, 0.1):
        its.run(sampler, jax.random.key(0), x, num_steps=50, params={"scale": scale})
    return [{"bench": "retraces over 5 calls with new params", "case": "same budget", "value": float(len(traces)),
             "unit": "traces", "target": "1", "ok": len(traces) == 1, "note": ""}]


def rows(quick: bool = False) -> list[dict]:
    return overhead_rows(quick) + compile_rows(quick) + retrace_rows(quick)


if __name__ == "__main__":
    from experiments.common import markdown_table

    print(markdown_table(rows()))
