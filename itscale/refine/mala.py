"""``its.refine.mala``: Langevin sampling of an energy-based model, Metropolis-adjusted or not.

For an unnormalised log-density log p̃(x) = −E(x) (``log_prob_fn``: batch -> (batch,)), each step
proposes the Langevin move (Roberts & Tweedie 1996)

    y = x + ε ∇log p̃(x) + sqrt(2ε) z,    z ~ N(0, I),

and, with ``adjusted=True`` (MALA), accepts it with probability
min(1, p̃(y) q(x | y) / (p̃(x) q(y | x))), q(b | a) = N(b; a + ε ∇log p̃(a), 2ε I), so that p is left
exactly invariant for any step size ε; ``adjusted=False`` always moves (ULA: biased by O(ε), no
rejections). ε is the traced ``params["step_size"]`` (default 0.1). This is the refinement axis of
energy-based models: more steps, the same law reached from further away.

NFE: one evaluation of log p̃ and its gradient (``jax.value_and_grad``) per row per step, plus one in
``init`` at the starting points; the current value and gradient are carried, never recomputed. The step
``info`` holds ``accept`` (batch,) bool. Output: the samples x.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models

_check_params = checks.param_ranges(step_size=(0.0, float("inf"), "(]"))


class MALAState(NamedTuple):
    """x (batch, ...), log_p (batch,) = log p̃(x), grad (batch, ...) = ∇log p̃(x)."""

    x: jax.Array
    log_p: jax.Array
    grad: jax.Array


def _log_q(to, start, grad, eps):
    """log N(to; start + ε grad, 2ε I) up to the constant shared by both directions, per row."""
    diff = to - start - eps * grad
    return -jnp.sum(diff**2, axis=tuple(range(1, diff.ndim))) / (4.0 * eps)


@takes_models
def mala(log_prob_fn: Callable, *, step_size: float = 0.1, adjusted: bool = True) -> Sampler:
    """Langevin sampler of ``log_prob_fn`` (see the module docstring); params {"step_size": step_size}."""
    checks.function("log_prob_fn", log_prob_fn, "batch -> unnormalised log-densities of shape (batch,)")
    if not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"step_size must be a number > 0, got {step_size!r}")

    def log_p_and_grad(x):
        def total(y):
            log_p = log_prob_fn(y)
            if jnp.shape(log_p) != y.shape[:1]:
                raise ValueError(f"log_prob_fn must return shape (batch,) = {y.shape[:1]}, got {jnp.shape(log_p)}")
            log_p = jnp.asarray(log_p, y.dtype)
            return jnp.sum(log_p), log_p

        (_, log_p), grad = jax.value_and_grad(total, has_aux=True)(x)
        return log_p, grad

    evaluate = counting.counted(log_p_and_grad)

    def validate(x, params):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or jnp.ndim(x) < 2:
            raise ValueError(f"x must be a floating array (batch, ...), got dtype {jnp.result_type(x)} and "
                             f"shape {jnp.shape(x)}")
        _check_params(x, params)

    def init(key, x, params):
        log_p, grad = evaluate(x)
        return MALAState(x, log_p, grad)

    def step(key, state, ctx, params):
        eps = jnp.asarray(params["step_size"], state.x.dtype)
        key_move, key_accept = jax.random.split(key)
        noise = jax.random.normal(key_move, state.x.shape, state.x.dtype)
        y = state.x + eps * state.grad + jnp.sqrt(2.0 * eps) * noise
        log_p_y, grad_y = evaluate(y)
        if adjusted:
            log_ratio = (log_p_y - state.log_p + _log_q(state.x, y, grad_y, eps)
                         - _log_q(y, state.x, state.grad, eps))
            u = jax.random.uniform(key_accept, log_ratio.shape, log_ratio.dtype)
            accept = jnp.log(u) < jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        else:
            accept = jnp.ones(state.log_p.shape, bool)
        rows = accept.reshape(accept.shape + (1,) * (state.x.ndim - 1))
        new = MALAState(jnp.where(rows, y, state.x), jnp.where(accept, log_p_y, state.log_p),
                        jnp.where(rows, grad_y, state.grad))
        return new, {"accept": accept}

    return Sampler(init, step, lambda state: state.x, {"step_size": step_size}, validate=validate, nfe_per_step=1)
