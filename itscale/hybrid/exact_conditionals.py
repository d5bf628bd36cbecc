"""The perfect denoiser of a Markov chain: exact p(x_i | unmasked tokens) by forward–backward.

For ``MarkovLM(log_initial, log_transition)`` (π, T) and a partly masked sequence z (``mask_id`` at
hidden positions), every position's exact conditional law given the visible tokens is

    p(x_i = v | z) ∝ a_i(v)·b_i(v),   a_0 = π·e_0,  a_i(v) = Σ_u a_{i−1}(u) T(u, v)·e_i(v),
                                     b_{L−1} = 1,  b_i(u) = Σ_v T(u, v) e_{i+1}(v) b_{i+1}(v),

with e_i(v) = 1 at a hidden position, 1[v = z_i] at a visible one (Rabiner 1989, the forward–backward
recursions; here in log space). Fed to a masked-diffusion sampler, this is the ideal p_θ(x₀ | z_t) of
MDLM (Sahoo et al. 2024, arXiv 2406.07524): a sampler that unmasks one position at a time, in an order
independent of the drawn tokens, then samples the chain's law exactly.

Tokens equal to ``mask_id`` are hidden; visible ids must lie in [0, V). The time argument is ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

from itscale.models.markov import MarkovLM
from itscale.tokens.sampling import check_token_id, log_normalize


def evidence(tokens: jax.Array, mask_id: int, vocab_size: int) -> jax.Array:
    """(batch, L, V) log e_i(v): 0 at hidden positions and at the visible token, −inf elsewhere."""
    hidden = (tokens == mask_id)[..., None]
    seen = tokens[..., None] == jnp.arange(vocab_size)
    return jnp.where(hidden | seen, 0.0, -jnp.inf)


def posterior_marginals(log_initial: jax.Array, log_transition: jax.Array, log_evidence: jax.Array) -> jax.Array:
    """(batch, L, V) log p(x_i = v | evidence) by the recursions of the module docstring (all −inf
    where the evidence is impossible under the chain)."""
    log_evidence = log_evidence.astype(log_transition.dtype)
    steps = jnp.moveaxis(log_evidence, 1, 0)                                 # (L, batch, V)

    def forward(a, e):
        a = logsumexp(a[:, :, None] + log_transition, axis=1) + e
        return a, a

    def backward(b, e):
        b = logsumexp(log_transition + (e + b)[:, None, :], axis=2)
        return b, b

    first = log_initial + steps[0]
    _, rest = lax.scan(forward, first, steps[1:])
    alphas = jnp.concatenate([first[None], rest])
    last = jnp.zeros_like(first)
    _, earlier = lax.scan(backward, last, steps[1:], reverse=True)
    betas = jnp.concatenate([earlier, last[None]])
    return jnp.moveaxis(log_normalize(alphas + betas), 0, 1)


def markov_denoiser(model: MarkovLM, *, mask_id: int) -> Callable:
    """``denoiser_fn(tokens, t) -> logits`` (batch, L, V): the exact conditionals of ``model`` given the
    unmasked tokens (see the module docstring); ``mask_id`` must lie outside the chain's vocabulary."""
    if not isinstance(model, MarkovLM):
        raise TypeError(f"model must be an itscale.models.MarkovLM, got {type(model).__name__}")
    mask_id = check_token_id("mask_id", mask_id)
    vocab = model.vocab_size
    if mask_id < vocab:
        raise ValueError(f"mask_id={mask_id} is a token of the chain's vocabulary [0, {vocab}); use an id >= {vocab}")

    def denoiser_fn(tokens, t):
        e = evidence(jnp.asarray(tokens), mask_id, vocab)
        return posterior_marginals(model.initial_log_probs(), model.log_transition, e)

    denoiser_fn.vocab_size = vocab
    return denoiser_fn
