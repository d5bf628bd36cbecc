"""itscale.hybrid: both axes at once -- masked (absorbing-state) discrete diffusion over tokens.

Every sampler takes a denoiser ``denoiser_fn(tokens, t) -> logits`` of p_θ(x₀ | z_t) per position
(:mod:`itscale.hybrid.masked`) and a ``mask_id``, runs with ``its.run(sampler, key, x, num_steps=K)`` on
``x`` (batch, L) holding ``mask_id`` where tokens are to be generated (all of them, or around prompts /
infilling constraints), counts one NFE per row per step, and returns a :class:`MaskedGeneration`
(``tokens``, ``log_probs``, ``num_masked``). They compose with ``its.search.smc`` / ``best_of_n`` as any
sampler does.

* :func:`mdlm`: MDLM ancestral sampling (Sahoo et al. 2024); :func:`remdm`: ReMDM remasking
  (Wang et al. 2025), cap / rescale / loop schedules.
* :func:`first_hitting`: one token per step at its sampled hitting time (Zheng et al. 2024).
* :func:`maskgit`: MaskGIT confidence decoding (Chang et al. 2022).
* :func:`var`: next-scale prediction (Tian et al. 2024), token maps coarse to fine; exact ground truth in
  :class:`itscale.models.ScaleTree`.
* :func:`markov_denoiser`: the perfect denoiser of a Markov chain (forward–backward): exact ground truth.
* :func:`categorical`, :func:`gumbel_noise`: Gumbel-max draws from 64 random bits, unbiased in float32.
* masking schedules α(t): :func:`mask_schedule` (``"log-linear"``, ``"cosine"``).
* continuous sequences with per-token noise levels (:mod:`itscale.hybrid.sequence_diffusion`):
  :func:`diffusion_forcing` (pyramid schedule), :func:`rolling_diffusion`, :func:`ar_diffusion`,
  :func:`mar` (masked autoregressive, a per-token diffusion in any order); exact
  ground truth in :class:`itscale.models.LinearGaussianSSM`.
* loops nested both ways (:mod:`itscale.hybrid.nest`): :func:`sequence_outer` (each block produced by an
  inner refinement sampler: blockwise diffusion, MAR), :func:`refinement_outer` (each sweep a sequence
  pass: Jacobi, MaskGIT), :func:`sequence_pass`; ``docs/hybrid.md`` maps the seed's model classes to
  compositions; :func:`distribution_smoothing` (AR distribution smoothing: each level of a smoothed
  sequence drawn by an AR pass given the coarser one; exact ground truth in
  :class:`itscale.models.SmoothedSSM`).
"""

from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.hybrid.first_hitting import first_hitting
from itscale.hybrid.gumbel import categorical, gumbel_noise
from itscale.hybrid.mask_schedules import COSINE, LOG_LINEAR, MaskSchedule, mask_schedule
from itscale.hybrid.masked import MaskedGeneration, MaskedState
from itscale.hybrid.masked_diffusion import mdlm, remdm
from itscale.hybrid.maskgit import maskgit
from itscale.hybrid.nest import Refined, refinement_outer, sequence_outer, sequence_pass
from itscale.hybrid.sequence_diffusion import (SequenceState, ar_diffusion, ar_diffusion_times, diffusion_forcing,
                                             mar, mar_times, pyramid_levels, pyramid_steps, rolling_diffusion)
from itscale.hybrid.smoothing import Smoothed, distribution_smoothing, smoothing_pass
from itscale.hybrid.var import var

__all__ = [
    "COSINE", "LOG_LINEAR", "MaskSchedule", "MaskedGeneration", "MaskedState", "Refined", "SequenceState", "Smoothed",
    "ar_diffusion", "ar_diffusion_times", "categorical", "diffusion_forcing", "distribution_smoothing", "first_hitting",
    "gumbel_noise", "mar", "mar_times", "markov_denoiser", "mask_schedule", "maskgit", "mdlm", "pyramid_levels",
    "pyramid_steps", "refinement_outer", "remdm", "rolling_diffusion", "sequence_outer", "sequence_pass", "smoothing_pass", "var"
]
