"""Prefill each prompt once and share it among the rows that grow from it (prefix sharing).

Every row of a search over one query starts from the same prompt, so the prompt goes through the
network once per query (NFE = P, not width × P) and the resulting state -- token buffer, KV cache,
next-token logits -- is copied to the rows. Token samplers keep every state leaf leading with the row
axis, so copying is a gather along axis 0 (``itscale.core.sharding.gather_particles``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itscale.core import checks
from itscale.core.sampler import Sampler, init_state
from itscale.core.sharding import gather_particles


def replicate_rows(state, copies: int):
    """Row ``b`` of every leaf repeated ``copies`` times: rows ``b·copies … b·copies + copies − 1``."""
    batch = jnp.shape(jax.tree.leaves(state)[0])[0]
    return gather_particles(state, jnp.repeat(jnp.arange(batch), copies))


def shared_prompt(sampler: Sampler, copies: int) -> Sampler:
    """``sampler`` run on x whose rows come in runs of ``copies`` equal prompts (query b at rows
    b·copies …): ``init`` prefills only the first row of each run and copies its state to the others."""
    copies = checks.positive_int("copies", copies)

    def init(key, x, params, ctx=None):
        return replicate_rows(init_state(sampler, key, jax.tree.map(lambda a: a[::copies], x), params, ctx),
                              copies)

    return sampler._replace(init=init)
