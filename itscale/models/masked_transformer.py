"""A bidirectional transformer denoiser for masked (absorbing-state) diffusion, and its training loss.

``MaskedTransformer(vocab_size, length, ...)`` maps tokens z (batch, L) over V + 1 ids (``mask_id = V``)
to logits (batch, L, V) of p_θ(x₀ | z), with full (non-causal) attention and learned positions. It is
*time-free*: for absorbing-state diffusion the posterior of x₀ given z_t depends on t only through
which positions are masked (Ou et al. 2024, arXiv 2406.03736; Sahoo et al. 2024, MDLM), so the
``t`` argument of the denoiser contract (``itscale.hybrid.masked``) is accepted and ignored. Pass the
module itself to ``its.hybrid.mdlm`` / ``remdm`` / ``maskgit`` / ``first_hitting``: its weights are
traced.

:func:`masked_denoising_loss` is MDLM's continuous-time objective for the log-linear schedule
α_t = 1 − t: with t ~ U(0, 1) and each position masked with probability t,

    L = E_t E_{z_t} [ (1 / t) Σ_{i masked} −log p_θ(x₀_i | z_t) ] / L

(the NELBO per token; its minimiser is the exact conditional of each masked position given the
unmasked ones, whatever t). ``t`` is drawn stratified over the batch (low-discrepancy, as MDLM does) to
tame the 1/t weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from itscale.core import checks


class _Block(nnx.Module):
    """Pre-norm block with full attention: ``x + Attn(Norm(x))`` then ``x + MLP(Norm(x))``."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.attn_norm = nnx.LayerNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        qkv = self.qkv(self.attn_norm(x)).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
        attended = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        x = x + self.out(attended.reshape(batch, length, width))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class MaskedTransformer(nnx.Module):
    """``MaskedTransformer(vocab_size, length, *, width=64, depth=2, num_heads=4, rngs)``: (tokens, t) ->
    logits (batch, L, vocab_size); ``mask_id = vocab_size``; see the module docstring."""

    def __init__(self, vocab_size: int, length: int, *, width: int = 64, depth: int = 2, num_heads: int = 4,
                 rngs: nnx.Rngs):
        self.vocab_size = checks.positive_int("vocab_size", vocab_size)
        self.length = checks.positive_int("length", length)
        width, num_heads = checks.positive_int("width", width), checks.positive_int("num_heads", num_heads)
        if width % num_heads:
            raise ValueError(f"width ({width}) must be a multiple of num_heads ({num_heads})")
        self.embed = nnx.Embed(vocab_size + 1, width, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, width)))
        self.blocks = nnx.List([_Block(width, num_heads, rngs=rngs)
                                for _ in range(checks.positive_int("depth", depth))])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab_size, rngs=rngs)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def __call__(self, tokens: jax.Array, t: jax.Array | None = None) -> jax.Array:
        if tokens.ndim != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens must have shape (batch, {self.length}), got {tokens.shape}")
        x = self.embed(tokens) + self.position[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def masked_denoising_loss(model: MaskedTransformer, tokens: jax.Array, key: jax.Array, *,
                          given: jax.Array | None = None) -> jax.Array:
    """MDLM's NELBO per token for clean ``tokens`` (batch, L) (see the module docstring).

    ``given``: optional bool (L,) or (batch, L), positions that are never masked (the conditioning: a
    prompt; conditional MDLM), so the loss trains p_θ(x₀ | z_t, prompt) and is averaged over the other
    positions."""
    batch, length = tokens.shape
    key_t, key_mask = jax.random.split(key)
    t = (jax.random.uniform(key_t) + jnp.arange(batch) / batch) % 1.0      # stratified over the batch
    t = jnp.maximum(t, 1e-3)
    masked = jax.random.uniform(key_mask, (batch, length)) < t[:, None]
    free = jnp.ones((batch, length), bool) if given is None else ~jnp.broadcast_to(given, (batch, length))
    masked = masked & free
    noisy = jnp.where(masked, model.mask_id, tokens)
    log_p = jax.nn.log_softmax(model(noisy, t).astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]
    per_row = jnp.sum(jnp.where(masked, nll, 0.0), axis=1) / jnp.maximum(jnp.sum(free, axis=1), 1)
    return jnp.mean(per_row / t)
