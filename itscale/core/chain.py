"""``chain((s1, n1), (s2, n2), ...)``: phases run one after another, each with its own step count.

Phase ``i`` runs steps ``[start_i, start_i + n_i)`` of the loop with a local context
``StepContext(step - start_i, n_i)``; at its first step it is initialised from the previous phase's
output, ``init_i(key, finalize_{i-1}(state_{i-1}), params_i, StepContext(0, n_i))`` (the phase's own
length in the context of an ``init`` that takes one). The chained sampler must be run with
``num_steps = n1 + n2 + ...``. ``params`` is the tuple of the phases' params. Only the active phase's
model calls are counted (``itscale.core.switch``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, StepContext, init_state, start_context, validate
from itscale.core.weights import takes_models

_INIT_STREAM = 0x7FFFFFFF  # fold-in constant for a phase's init key, distinct from any step index


@takes_models
def chain(*phases: tuple[Sampler, int]) -> Sampler:
    """Compose ``(sampler, num_steps)`` phases into one sampler of ``sum(num_steps)`` steps."""
    if not phases:
        raise ValueError("chain needs at least one (sampler, num_steps) phase")
    samplers, lengths = [], []
    for i, phase in enumerate(phases):
        if not (isinstance(phase, tuple) and len(phase) == 2 and isinstance(phase[0], Sampler)):
            raise TypeError(f"phase {i} must be a (Sampler, num_steps) tuple, got {phase!r}")
        samplers.append(phase[0])
        lengths.append(checks.positive_int(f"num_steps of phase {i}", phase[1]))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    total = int(sum(lengths))

    def init(key, x, params, ctx=None):
        states = [init_state(samplers[0], key, x, params[0], start_context(lengths[0]))]
        for i in range(1, len(samplers)):
            def phase_init(s, i=i):
                return init_state(samplers[i], key, samplers[i - 1].finalize(s), params[i],
                                  start_context(lengths[i]))

            shape = counting.eval_shape(phase_init, states[-1])
            states.append(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shape))
        return tuple(states)

    def phase_branch(i, key, ctx, params):
        local = ctx.step - starts[i]

        def branch(states):
            state = states[i]
            if i > 0:
                def start_state(s):
                    return init_state(samplers[i], jax.random.fold_in(key, _INIT_STREAM),
                                      samplers[i - 1].finalize(s[i - 1]), params[i],
                                      start_context(lengths[i]))

                state = counting.cond(local == 0, start_state, lambda s: s[i], states)
            state, _ = samplers[i].step(key, state, StepContext(local, lengths[i]), params[i])
            return states[:i] + (state,) + states[i + 1:]

        return branch

    def step(key, states, ctx, params):
        if ctx.num_steps != total:
            raise ValueError(f"this chain has {total} steps ({' + '.join(map(str, lengths))}); "
                             f"run it with num_steps={total}, got {ctx.num_steps}")
        phase = jnp.searchsorted(jnp.asarray(starts), ctx.step, side="right") - 1
        branches = [phase_branch(i, key, ctx, params) for i in range(len(samplers))]
        return counting.switch(phase, branches, states), {"phase": phase}

    def finalize(states):
        return samplers[-1].finalize(states[-1])

    def check(x, params):
        for i, sampler in enumerate(samplers):
            validate(sampler, x if i == 0 else None, params[i])

    return Sampler(init, step, finalize, tuple(s.params for s in samplers), prior=samplers[0].prior,
                   validate=check)
