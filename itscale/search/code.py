"""``code(sampler, reward_fn, num_children=K | nfe_budget=B, block_size=M)``: blockwise best-of-N.

CoDe (Singh et al. 2025, "CoDe: blockwise control for denoising diffusion models", arXiv 2502.00968,
Alg. 1): every M steps, each particle draws K children and rolls each out for the next M steps of the
base sampler's own stochastic transition, scores each block end by r(x̂₀) (r(x₀) at the last step) and
keeps the best (α = ``params.alpha`` = 0, default) or one drawn ∝ exp(r / α). The last block may be
shorter. ``block_size=1`` is SVDD with the same α, bit for bit (:mod:`itscale.search.svdd`).

Built on :mod:`itscale.search.children`; cost per query ``P · K · nfe_per_step · (T + ⌈T/M⌉ − 1)``
(every step on K rows per particle, one preview per selection but the last), and ``nfe_budget=B`` buys
the largest such K. Output: a :class:`itscale.search.SearchOutput` over the P particles of each query.
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.children import children_search


@takes_models
def code(sampler: Sampler, reward_fn: Callable, *, block_size: int, nfe_budget: int | None = None,
         num_children: int | None = None, num_particles: int = 1, alpha: float = 0.0,
         nfe_per_step: int | None = None) -> Sampler:
    """CoDe over ``sampler``; see the module docstring. Arguments as :func:`itscale.search.svdd.svdd`,
    plus ``block_size``, the static number of steps M between selections."""
    return children_search(sampler, reward_fn, nfe_budget=nfe_budget, num_children=num_children,
                           num_particles=num_particles, block_size=block_size, alpha=alpha,
                           nfe_per_step=nfe_per_step, name="code")
