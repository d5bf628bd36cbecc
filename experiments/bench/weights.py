"""Models with weights: compile time against the parameter count, and new weights without recompiling.

An MLP velocity 2 -> w -> w -> w -> 2 (``its.models.MLP(2, width=w, depth=3)``) at 0.1 M, 8.4 M and
33.6 M parameters; Euler, 4 steps, batch 8. For each size: the seconds to trace and compile the loop
from cold caches with the NNX module given as the model (weights traced; best of 3), and the first
``its.run`` (trace + compile + run) of that module and of a closure over the same weights
(``its.models.as_fn``: weights inlined as constants). Then one optimizer step changes the module's
weights and the sampler is built again: the run after it must not compile (0 new compilations) and
must use the new weights (the output changes). Target: compile time at 33.6 M <= 1.5x that at 0.1 M.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import itscale as its
from experiments.bench.timing import compile_seconds
from itscale.core.run import _run, lower

WIDTHS = {"0.1 M": 224, "8.4 M": 2048, "33.6 M": 4096}


def _first_call_seconds(model_arg) -> float:
    x, key = jnp.ones((8, 2)), jax.random.key(0)
    jax.clear_caches()
    start = time.perf_counter()
    jax.block_until_ready(its.run(its.refine.ode(model_arg, solver="euler"), key, x, num_steps=4).output)
    return time.perf_counter() - start


def _compile_seconds(model) -> float:
    sampler = its.refine.ode(model, solver="euler")
    return min(compile_seconds(lambda: lower(sampler, jax.random.key(0), jnp.ones((8, 2)), num_steps=4))
               for _ in range(3))


def _after_new_weights(model) -> tuple[float, int, float]:
    """Seconds of the run after an optimizer step, compilations it added, and how much the output moved."""
    x, key = jnp.ones((8, 2)), jax.random.key(0)
    before = its.run(its.refine.ode(model, solver="euler"), key, x, num_steps=4).output
    optimizer = nnx.Optimizer(model, optax.sgd(1e-2), wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x, 0.5) ** 2))(model))
    compiled = _run._cache_size()
    start = time.perf_counter()
    after = jax.block_until_ready(its.run(its.refine.ode(model, solver="euler"), key, x, num_steps=4).output)
    seconds = time.perf_counter() - start
    return seconds, _run._cache_size() - compiled, float(jnp.abs(after - before).max())


def rows(quick: bool = False) -> list[dict]:
    out, compile_time = [], {}
    warm = its.models.MLP(2, width=8, depth=3, rngs=nnx.Rngs(0))     # the process's first compilations
    _first_call_seconds(warm), _first_call_seconds(its.models.as_fn(warm)), _after_new_weights(warm)
    for label, width in WIDTHS.items():
        model = its.models.MLP(2, width=width, depth=3, rngs=nnx.Rngs(0))
        params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
        first = _first_call_seconds(model)
        closure = _first_call_seconds(its.models.as_fn(model))
        compile_time[label] = _compile_seconds(model)
        seconds, compiled, moved = _after_new_weights(model)
        out.append({"bench": "trace + compile, weights traced (MLP, Euler, 4 steps, batch 8)",
                    "case": f"{label} ({params:,} parameters)", "value": compile_time[label], "unit": "s",
                    "target": "", "ok": None,
                    "note": f"first its.run {first:.2f} s; with a closure over the weights {closure:.2f} s"})
        out.append({"bench": "run after an optimizer step, sampler built again", "case": label,
                    "value": float(compiled), "unit": "compilations", "target": "0",
                    "ok": compiled == 0 and moved > 0,
                    "note": f"{seconds * 1e3:.1f} ms; output moved by {moved:.2e}"})
    ratio = compile_time["33.6 M"] / compile_time["0.1 M"]
    out.append({"bench": "compile time vs parameter count", "case": "33.6 M / 0.1 M", "value": ratio,
                "unit": "x", "target": "<= 1.5x", "ok": ratio <= 1.5, "note": ""})
    return out


if __name__ == "__main__":
    from experiments.common import markdown_table

    print(markdown_table(rows()))
