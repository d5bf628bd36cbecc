"""What the masked-token samplers share: the denoiser contract, the state and the output.

Denoiser. ``denoiser_fn(tokens, t) -> logits``: ``tokens`` (batch, L) int32 hold ``mask_id`` at masked
positions, ``t`` (batch,) the diffusion time of each row (t = 1: all masked); ``logits`` (batch, L, V)
are p_θ(x₀ | z_t) per position, unnormalised. The call is counted as one NFE per row
(``itscale.core.counting``). ``mask_id`` may lie outside the vocabulary (``mask_id >= V``, the usual
choice) or inside it, in which case its logit is ignored (MDLM's "zero masking probabilities").
Logits are sanitised like a token model's (NaN → −inf, +inf → largest float); a position without a
possible token stays masked and its ``log_probs`` entry is −inf, which ``its.run`` reports in
``stats.nonfinite`` (never NaN).

Input. ``x`` (batch, L) int: ``mask_id`` where tokens are to be generated, given tokens elsewhere
(prompts, infilling constraints). Given tokens are never changed (nor re-masked).

Output. :class:`MaskedGeneration` with the token rollouts' field names where they apply: ``tokens``
(batch, L) int32 (``mask_id`` where a position is still masked), ``log_probs`` (batch, L) log p_θ of each
generated token when it was decided (0 for given and masked positions), ``num_masked`` (batch,).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from itscale.core import checks, counting
from itscale.tokens.sampling import check_token_id, model_log_probs


class MaskedState(NamedTuple):
    """Every leaf leads with the batch axis. ``time``: each row's diffusion time (1 at the start)."""

    tokens: jax.Array      # (batch, L) int32
    given: jax.Array       # (batch, L) bool: positions fixed by x
    log_probs: jax.Array   # (batch, L) float
    time: jax.Array        # (batch,) float


class MaskedGeneration(NamedTuple):
    """See the module docstring."""

    tokens: jax.Array
    log_probs: jax.Array
    num_masked: jax.Array


class Denoiser(NamedTuple):
    """A counted denoiser with its mask id: ``denoiser(tokens, t)`` returns normalised log p_θ(x₀ | z_t)
    (batch, L, V), −inf for the mask id and for impossible tokens."""

    fn: Callable
    mask_id: int

    def __call__(self, tokens: jax.Array, t: jax.Array) -> jax.Array:
        logits = self.fn(tokens, t)
        if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != tokens.shape:
            raise ValueError(f"denoiser_fn fed tokens of shape {tokens.shape} returned logits of shape "
                             f"{jnp.shape(logits)}; expected (batch, L, vocab) = {tokens.shape + ('V',)}")
        if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
            raise TypeError(f"denoiser_fn must return floating logits, got dtype {jnp.result_type(logits)}")
        log_p = model_log_probs(logits)
        if self.mask_id < log_p.shape[-1]:
            log_p = model_log_probs(log_p.at[..., self.mask_id].set(-jnp.inf))
        return log_p


def denoiser(name: str, denoiser_fn: Callable, mask_id) -> Denoiser:
    """Check ``denoiser_fn`` and ``mask_id``; wrap the function with ``counting.counted``."""
    if not callable(denoiser_fn):
        raise TypeError(f"{name} must be a callable denoiser_fn(tokens, t) -> logits (batch, L, V), "
                        f"got {type(denoiser_fn).__name__}")
    return Denoiser(counting.counted(denoiser_fn), check_token_id("mask_id", mask_id))


def start(x, mask_id: int, dtype=None) -> MaskedState:
    """The state of ``x`` (batch, L): given where ``x != mask_id``, time 1."""
    tokens = checks.int_array("x", x, ndim=2).astype(jnp.int32)
    dtype = jax.dtypes.canonicalize_dtype(float) if dtype is None else dtype
    batch = tokens.shape[0]
    return MaskedState(tokens, tokens != mask_id, jnp.zeros(tokens.shape, dtype), jnp.ones((batch,), dtype))


def check_tokens(x, params) -> None:
    """``Sampler.validate`` of the input: a (batch, L) array of non-negative integer ids."""
    if x is None:
        return
    tokens = checks.int_array("x", x, ndim=2)
    host = checks.concrete(tokens)
    if host is not None and (host < 0).any():
        raise ValueError(f"x holds negative token ids: {sorted(set(host[host < 0].tolist()))[:8]}")


def validator(**ranges: tuple[float, float]) -> Callable:
    """``Sampler.validate``: :func:`check_tokens` and each named parameter in its closed range."""
    check_params = checks.param_ranges(**ranges)

    def check(x, params) -> None:
        check_tokens(x, params)
        if params is not None:
            check_params(x, params)

    return check


def pick(log_p: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log_p[..., tokens]`` with −inf for an impossible position (any index of a −inf row)."""
    return jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]


def possible(log_p: jax.Array) -> jax.Array:
    """(batch, L) bool: the position has a token of finite log-probability."""
    return jnp.isfinite(jnp.max(log_p, axis=-1))


def finalize(state: MaskedState, mask_id: int) -> MaskedGeneration:
    masked = state.tokens == mask_id
    return MaskedGeneration(state.tokens, state.log_probs, jnp.sum(masked, axis=1, dtype=jnp.int32))


def watch(state: MaskedState):
    """Only the float leaves can hold non-finite values: the log-probabilities and times."""
    return state.log_probs, state.time


def uniform(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Uniform [0, 1) draws in ``dtype`` (at least float32)."""
    return jax.random.uniform(key, shape, jnp.promote_types(dtype, jnp.float32))
