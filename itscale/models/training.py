"""A small generic training loop for Flax NNX models with optax.

``train(loss_fn, model, data, optimizer, num_steps)`` minimises ``loss_fn(model, batch, key)`` by
gradient steps ``params <- params + optimizer.update(grad, state)`` (any optax transformation).
The model is split once into parameters and other state (``nnx.split``), the step is a pure jitted
function of those pytrees, and the trained values are written back into ``model`` (``nnx.update``).

Data can be given three ways:

* a function ``data(key) -> batch`` (e.g. a ``jax.random`` problem generator): batches are drawn
  inside the compiled step and the whole run is one ``lax.scan`` (no Python per step);
* a pytree of arrays sharing a leading axis of N examples: each step draws ``batch_size`` examples
  uniformly with replacement (all N when ``batch_size`` is None), also inside one ``lax.scan``;
* an iterator of batches: a Python loop over a jitted step (for data that lives outside JAX).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from itscale.core import checks

M = TypeVar("M", bound=nnx.Module)


def train(loss_fn: Callable[[M, Any, jax.Array], jax.Array], model: M, data: Any,
          optimizer: optax.GradientTransformation, num_steps: int, *, batch_size: int | None = None,
          key: jax.Array | None = None) -> tuple[M, np.ndarray]:
    """Train ``model`` in place for ``num_steps`` steps; return ``(model, losses)``.

    Args:
      loss_fn: ``loss_fn(model, batch, key) -> scalar`` (``key`` for stochastic losses, e.g. the
        noise and time of a denoising loss; ignore it otherwise). Variables other than ``nnx.Param``
        that it mutates (e.g. batch statistics) are carried from step to step.
      model: an NNX module; its ``nnx.Param`` variables are trained.
      data: ``data(key) -> batch``, a pytree of arrays with a shared leading axis, or an iterator of
        batches (see the module docstring).
      optimizer: an optax ``GradientTransformation``.
      num_steps: number of gradient steps (static).
      batch_size: examples per step when ``data`` is a pytree of arrays (None: all of them).
      key: PRNG key (default ``jax.random.key(0)``); step ``i`` uses ``fold_in(key, i)``.

    Returns:
      The same ``model`` object, updated, and the loss before each step, a float array (num_steps,).
    """
    num_steps = checks.positive_int("num_steps", num_steps)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    key = jax.random.key(0) if key is None else key
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def step(carry, batch, step_key):
        params, rest, opt_state = carry

        def loss_of(params):
            module = nnx.merge(graphdef, params, rest)
            loss = loss_fn(module, batch, step_key)
            return loss, nnx.split(module, nnx.Param, ...)[2]

        (loss, new_rest), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_rest, opt_state), loss

    carry = (params, rest, optimizer.init(params))
    if isinstance(data, Iterator):
        jitted = jax.jit(step, donate_argnums=0)
        losses = []
        for i in range(num_steps):
            try:
                batch = next(data)
            except StopIteration:
                raise ValueError(f"data iterator ran out after {i} batches; num_steps={num_steps}") from None
            carry, loss = jitted(carry, batch, jax.random.fold_in(key, i))
            losses.append(loss)
        losses = jnp.stack(losses)
    else:
        arrays = None if callable(data) else data       # passed as an argument, not baked in
        draw = (lambda k, _: data(k)) if callable(data) else _minibatches(data, batch_size)

        @jax.jit
        def run(carry, arrays):
            def body(carry, i):
                data_key, loss_key = jax.random.split(jax.random.fold_in(key, i))
                return step(carry, draw(data_key, arrays), loss_key)
            return jax.lax.scan(body, carry, jnp.arange(num_steps))

        carry, losses = run(carry, arrays)
    nnx.update(model, carry[0], carry[1])
    return model, np.asarray(losses)


def _minibatches(arrays: Any, batch_size: int | None) -> Callable[[jax.Array, Any], Any]:
    """``draw(key, arrays)``: ``batch_size`` rows drawn uniformly with replacement (all if None)."""
    leaves = jax.tree.leaves(arrays)
    if not leaves:
        raise ValueError("data must be a function key -> batch, an iterator, or a non-empty pytree of arrays")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"data arrays must share a leading (example) axis, got leading sizes {sizes}")
    (size,) = sizes
    if batch_size is None:
        return lambda key, arrays: arrays
    batch_size = checks.positive_int("batch_size", batch_size)

    def draw(key, arrays):
        index = jax.random.randint(key, (batch_size,), 0, size)
        return jax.tree.map(lambda x: x[index], arrays)

    return draw
