"""Scoring a particle during a run: its denoised estimate before the last step, its output at it.

After a step, a search scores each row on a *preview* of where it is heading: ``info["x0_hat"]`` (the
model's estimate of x_0 at the pre-step state, reported by every refinement sampler) or a user's
``preview(state', info)``, and on ``finalize(state')`` = x_0 at the last step, so that potentials
telescope to the final reward (:mod:`itscale.search.potentials`). :func:`preview_scores` makes that one
verifier call per row either way: a select of the two inputs when both are free to compute, else a
counted ``cond`` on the traced last-step flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from itscale.core import counting
from itscale.core.sampler import Sampler


def free_and_alike(finalize, look, state, info) -> bool:
    """Static check: ``finalize(state)`` and ``look(state, info)`` make no counted (model / verifier)
    calls and return pytrees of the same structure, shapes and dtypes."""
    calls = []

    def probe(state, info):
        with counting.ledger() as led:
            out = finalize(state), look(state, info)
        calls.append(any(led.entries[kind] for kind in counting.KINDS))
        return out

    final, ahead = jax.eval_shape(probe, state, info)
    leaves = zip(jax.tree.leaves(final), jax.tree.leaves(ahead))
    same = jax.tree.structure(final) == jax.tree.structure(ahead) and all(
        (a.shape, a.dtype) == (b.shape, b.dtype) for a, b in leaves)
    return same and not calls[0]


def preview_scores(sampler: Sampler, score: Callable, preview: Callable | None, new_state, info,
                   is_last) -> jax.Array:
    """score(preview) after a step: ``score(finalize(state'))`` at the last step (``is_last`` traced);
    before it ``score(preview(state', info))``, default ``info["x0_hat"]`` if the step reports one, else
    ``finalize(state')``. One verifier call either way: a select of free inputs, else a counted cond."""
    if preview is None and not (isinstance(info, Mapping) and "x0_hat" in info):
        return score(sampler.finalize(new_state))
    look = preview if preview is not None else (lambda state, step_info: step_info["x0_hat"])
    if free_and_alike(sampler.finalize, look, new_state, info):
        final, ahead = sampler.finalize(new_state), look(new_state, info)
        return score(jax.tree.map(lambda f, a: jnp.where(is_last, f, a), final, ahead))
    return counting.cond(is_last, lambda s, i: score(sampler.finalize(s)), lambda s, i: score(look(s, i)),
                         new_state, info)
