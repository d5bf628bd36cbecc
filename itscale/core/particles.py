"""``particles(sampler, N)``: run N independent copies of a sampler, vectorised with ``vmap``.

Every state leaf gains a leading particle axis of static size N; particle ``i`` gets key
``split(fold_in(key, step), N)[i]``, so results do not depend on how particles are sharded. NFE is
summed over particles (N copies of a batch-b call count N·b).
"""

from __future__ import annotations

import jax

from itscale.core import checks, counting
from itscale.core.keys import split_per_particle
from itscale.core.sampler import Sampler, init_state
from itscale.core.weights import takes_models


@takes_models
def particles(sampler: Sampler, num_particles: int, *, rows: str | None = None) -> Sampler:
    """Vectorise ``sampler`` over ``num_particles`` particles; ``x`` must lead with that axis.

    ``rows`` tells the NFE count what a particle is (:func:`itscale.core.counting.vmap`): ``"batched"``
    (each particle holds a batch of rows), ``"single"`` (each particle is one sample: a model call
    costs 1) or None (a model call on an argument of fewer than two axes raises as ambiguous).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be an itscale.Sampler, got {type(sampler).__name__}")
    n = checks.positive_int("num_particles", num_particles)

    def init(key, x, params, ctx=None):
        for leaf in jax.tree.leaves(x):
            if leaf.ndim == 0 or leaf.shape[0] != n:
                raise ValueError(f"x must lead with the particle axis of size num_particles={n}, "
                                 f"got a leaf of shape {leaf.shape}")
        one = lambda k, x, params: init_state(sampler, k, x, params, ctx)  # noqa: E731  (ctx not mapped)
        return counting.vmap(one, in_axes=(0, 0, None), rows=rows)(split_per_particle(key, n), x, params)

    def step(key, state, ctx, params):
        one = lambda k, s: sampler.step(k, s, ctx, params)  # noqa: E731
        return counting.vmap(one, rows=rows)(split_per_particle(key, n), state)

    watch = None if sampler.watch is None else jax.vmap(sampler.watch)
    prior = None if sampler.prior is None else (
        lambda key, x: jax.vmap(sampler.prior)(split_per_particle(key, n), x))
    return Sampler(init, step, counting.vmap(sampler.finalize, rows=rows), sampler.params, watch, prior,
                   sampler.validate, nfe_per_step=sampler.nfe_per_step)
