"""``token_smc``: SMC over reasoning steps of an LM under an NFE budget -- the generic
:func:`itscale.search.smc` on a step rollout, nothing re-implemented.

Twisted SMC for LMs (llamppl: Lew et al. 2023, arXiv 2306.03081; Zhao et al. 2024, arXiv 2404.17546):
particles are partial sequences, the proposal is the model's own step (so only potentials enter the
weights) and ``reward_fn`` is a twist ψ on partial sequences in log space, log ψ(x_{1:t}). With the
``"difference"`` potential the incremental log-weight is log ψ_t − log ψ_{t−1} and the last step uses
the final reward, so the target is p(x) exp(λ r(x)) / Z and ``log_normalizer`` estimates
log E_p[exp(λ r(x))] (e.g. r = log 1[x satisfies a constraint]: log P(constraint)); the closer ψ is
to the exact twist E_p[exp(λ r) | x_{1:t}], the lower the variance. Resampling when
ESS < ``ess_threshold`` · N (1: every step).

Per query, the N particles are rows of one :func:`itscale.tokens.step_rollout` (``noise="step"``,
so resampled copies diverge) whose prompt is prefilled once (``shared_prompt``): NFE <= P + N ×
num_steps × step_length, N the largest that fits ``nfe_budget``. Queries of a batch are independent
SMC runs (``its.particles`` of the generic SMC step, with the same keys), except that the rollout
state is never touched under that ``vmap``, where every per-query branch becomes a select of the
whole KV cache (the token loop's stopping test at every token, the resampling ``cond`` at every
step): all queries' particles take their reasoning step in one token loop over the batch × N rows
(``step_rollout(..., group_size=N)``: the same noise and NFE as the per-query loops), the vmapped
SMC step weights and resamples (row index, Generation) pairs, and the rows are then resampled once
by the chosen ancestors, in place (:mod:`itscale.search.in_place`). Run with
``its.run(sampler, key, prompts, num_steps=num_steps)``, ``prompts`` (batch, P) or ``(prompts, lengths)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from itscale.core import counting
from itscale.core.keys import split_per_particle
from itscale.core.particles import particles
from itscale.core.sampler import Sampler, init_state, watch_within
from itscale.search.in_place import resample_in_place
from itscale.search.smc import SMCParams, check_params, smc
from itscale.tokens import sequences
from itscale.tokens.search.budget import SearchSplit, check_budget, plan_search
from itscale.tokens.search.shared_prompt import shared_prompt
from itscale.tokens.steps import step_rollout
from itscale.core.weights import takes_models


@takes_models
def token_smc(logits_fn: Callable, reward_fn: Callable, *, nfe_budget: int, num_steps: int, step_length: int,
              separator_id: int | None = None, potential: str = "difference", resample: str = "systematic",
              ess_threshold: float = 0.5, lam: float = 1.0, **rollout_options) -> Sampler:
    """SMC steering of an LM's reasoning steps by ``reward_fn``; see the module docstring.

    Args:
      logits_fn: ``logits_fn(tokens, cache) -> (logits, cache)``.
      reward_fn: ``Generation`` (N rows) -> log-twist / reward (N,); −inf marks impossible particles.
      nfe_budget: static NFE per query. num_steps, step_length, separator_id: the reasoning steps
        (:func:`itscale.tokens.step_rollout`; step_length=1 for token-level SMC).
      potential, resample, ess_threshold, lam: as in :func:`itscale.search.smc`; ``params`` =
        ``SMCParams(base=decoding params, lam, ess_threshold)``.
      rollout_options: temperature, top_k, top_p, min_p, eos_id, pad_id, init_cache, rewind, max_len.
    """
    nfe_budget, num_steps, step_length = check_budget(nfe_budget, num_steps=num_steps,
                                                      step_length=step_length, group_name="particle")

    def rollout(group_size=None) -> Sampler:
        return step_rollout(logits_fn, step_length=step_length, separator_id=separator_id, noise="step",
                            max_new_tokens=num_steps * step_length, group_size=group_size, **rollout_options)

    base = rollout()
    grouped = functools.cache(rollout)
    options = dict(potential=potential, resample=resample, ess_threshold=ess_threshold, lam=lam)
    smc(base, reward_fn, num_particles=1, **options)  # check the arguments before any trace

    @functools.cache
    def plan(prompt_len: int) -> SearchSplit:
        return plan_search(nfe_budget, prompt_len=prompt_len, num_steps=num_steps, step_length=step_length,
                           group_name="particle")

    @functools.cache
    def queries(batch: int, prompt_len: int) -> Sampler:
        """``batch`` independent SMC runs of the planned number of particles."""
        n = plan(prompt_len).width
        return particles(smc(shared_prompt(base, n), reward_fn, num_particles=n, **options), batch)

    def for_state(state) -> Sampler:
        tokens = state.base.seq.tokens                                   # (batch, N, P + new tokens)
        return queries(tokens.shape[0], tokens.shape[-1] - num_steps * step_length)

    def init(key, x, params, ctx=None):
        prompts, _ = sequences.parse_prompts(x)
        batch, prompt_len = prompts.shape
        n = plan(prompt_len).width
        per_query = jax.tree.map(lambda a: jnp.repeat(jnp.asarray(a)[:, None], n, axis=1), x)
        return init_state(queries(batch, prompt_len), key, per_query, params, ctx)

    def step(key, state, ctx, params):
        if ctx.num_steps != num_steps:
            raise ValueError(f"this SMC is built for num_steps={num_steps} reasoning steps; run it with "
                             f"its.run(..., num_steps={num_steps}), got {ctx.num_steps}")
        batch, n = state.log_weights.shape
        rows = jax.tree.map(lambda a: a.reshape((batch * n,) + a.shape[2:]), state.base)
        moved, info = grouped(n).step(key, rows, ctx, params.base)
        padded_nfe = info.pop("padded_nfe")                              # a scalar of the shared token loop
        per_query = functools.partial(jax.tree.map, lambda a: a.reshape((batch, n) + a.shape[1:]))

        def weigh(query_key, query_state, query_info, generation):
            """The SMC step of one query on its moved particles, each a (row index, Generation) pair."""
            moved_particles = (jnp.arange(n, dtype=jnp.int32), generation)
            already_moved = Sampler(base.init, lambda *_: (moved_particles, query_info),
                                    lambda particle: particle[1], base.params)
            return smc(already_moved, reward_fn, num_particles=n, **options).step(
                query_key, query_state._replace(base=None), ctx, params)

        new_state, info = counting.vmap(weigh, rows="batched")(split_per_particle(key, batch), state,
                                                               per_query(info), per_query(base.finalize(moved)))
        ancestors = new_state.base[0] + n * jnp.arange(batch, dtype=jnp.int32)[:, None]
        return (new_state._replace(base=per_query(resample_in_place(moved, ancestors.reshape(-1)))),
                {**info, "padded_nfe": padded_nfe})

    def finalize(state):
        prompt_len = state.base.seq.tokens.shape[-1] - num_steps * step_length
        return for_state(state).finalize(state)._replace(split=plan(prompt_len).as_arrays())

    return Sampler(init, step, finalize, SMCParams(base.params, lam, ess_threshold), watch_within(base.watch, "base"),
                   validate=check_params(base))
