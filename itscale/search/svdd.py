"""``svdd(sampler, reward_fn, num_children=K | nfe_budget=B)``: soft value-based decoding over any
stochastic refinement sampler.

SVDD (Li et al. 2024, "Derivative-free guidance in continuous and discrete diffusion models with soft
value-based decoding", arXiv 2408.08252, Alg. 1 with the x̂₀ value v(x_t) = r(x̂₀(x_t)), "SVDD-PM"):
at every denoising step each particle draws K children x_{t-1}^k ~ p(· | x_t) from the base sampler's
own stochastic transition and keeps one, with probability ∝ exp(v(x_{t-1}^k) / α); α = 0 (default)
keeps the arg-max. α is ``params.alpha`` (traced: sweeping it never recompiles).

Children, their x̂₀ previews and the selection are :mod:`itscale.search.children` with
``block_size = 1``; cost per query ``P · K · nfe_per_step · (2T − 1)`` (each child is drawn and, but at
the last step, previewed). ``nfe_budget=B`` buys the largest such K (K = 1, the base sampler itself,
when B only covers ``P · nfe_per_step · T``). ``x`` is a batch of queries; each query's P particles
start from its own noise (particle 0) and fresh draws of the sampler's prior. The output is a
:class:`itscale.search.SearchOutput` whose candidates are the P particles of each query, scored by
r(x₀).
"""

from __future__ import annotations

from collections.abc import Callable

from itscale.core.sampler import Sampler
from itscale.core.weights import takes_models
from itscale.search.children import children_search


@takes_models
def svdd(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int | None = None,
         num_children: int | None = None, num_particles: int = 1, alpha: float = 0.0,
         nfe_per_step: int | None = None) -> Sampler:
    """SVDD over ``sampler``; see the module docstring.

    Args:
      sampler: a stochastic refinement :class:`itscale.Sampler` whose step reports ``info["x0_hat"]``.
      reward_fn: batch -> scores of shape (batch,), higher is better; −inf marks impossible outputs.
      nfe_budget: static NFE per query (K planned from it and the run's ``num_steps``), or
      num_children: static K (give exactly one of the two).
      num_particles: static P, particles per query.
      alpha: default of ``params.alpha`` >= 0, the selection temperature (0: greedy).
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
    """
    return children_search(sampler, reward_fn, nfe_budget=nfe_budget, num_children=num_children,
                           num_particles=num_particles, block_size=1, alpha=alpha,
                           nfe_per_step=nfe_per_step, name="svdd")
