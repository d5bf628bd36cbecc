"""Multi-scale token maps with an exact law: ground truth for next-scale prediction (VAR).

Maps r_1, ..., r_K of sizes ``scales`` = (s_1 < ... < s_K) are laid out coarse to fine on a canvas of
L = Σ s_k positions. Map 1's tokens are i.i.d. from ``initial``; token i of map k + 1 is drawn from the row
of ``transitions[k]`` of its parent, token ⌊i·s_k / s_{k+1}⌋ of map k (a coarse token is refined into the
tokens it covers, as a VQ token of an image patch is into those of its sub-patches):

    log p(r) = Σ_{i in map 1} log π(r_{1,i}) + Σ_k Σ_{i in map k+1} log P_k[r_{k, parent(i)}, r_{k+1,i}].

Tokens of one map are independent given the coarser maps, VAR's factorisation, so next-scale prediction
with the exact conditional p(r_k | r_<k) = Π_i P_{k-1}[parent(i), ·] samples this law exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks


def scale_layout(scales) -> tuple[int, ...]:
    """``scales`` checked: a non-empty, strictly increasing tuple of positive ints."""
    if isinstance(scales, (int, np.integer)) or not hasattr(scales, "__len__") or len(scales) == 0:
        raise ValueError(f"scales must be a non-empty sequence of map sizes, coarse to fine, got {scales!r}")
    sizes = tuple(checks.positive_int(f"scales[{k}]", s) for k, s in enumerate(scales))
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"scales must be strictly increasing (coarse to fine), got {sizes}")
    return sizes


def map_index(scales: tuple[int, ...]) -> np.ndarray:
    """(L,) int32: the map (0-based) that each canvas position belongs to."""
    return np.repeat(np.arange(len(scales), dtype=np.int32), scales)


def parent_index(scales: tuple[int, ...]) -> np.ndarray:
    """(L,) int32 canvas position of each token's parent (−1 for map 1's tokens)."""
    starts = np.concatenate([[0], np.cumsum(scales)[:-1]])
    parents = [np.full(scales[0], -1)]
    for k in range(1, len(scales)):
        parents.append(starts[k - 1] + np.arange(scales[k]) * scales[k - 1] // scales[k])
    return np.concatenate(parents).astype(np.int32)


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True, eq=False)
class ScaleTree:
    """Token maps of sizes ``scales`` with the law of the module docstring. ``initial`` (V,) and
    ``transitions`` (K − 1, V, V) hold log-probabilities (normalised over the last axis); ``scales`` is static.
    A pytree of its two arrays."""

    initial: jax.Array
    transitions: jax.Array
    scales: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "scales", scale_layout(self.scales))
        v = jnp.shape(self.initial)[-1] if jnp.ndim(self.initial) == 1 else None
        if v is None:
            raise ValueError(f"initial must have shape (V,), got {jnp.shape(self.initial)}")
        want = (len(self.scales) - 1, v, v)
        if jnp.shape(self.transitions) != want:
            raise ValueError(f"transitions must have shape (len(scales) - 1, V, V) = {want}, got "
                             f"{jnp.shape(self.transitions)}")

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in ("initial", "transitions")], self.scales

    @classmethod
    def tree_unflatten(cls, scales, children):
        return cls(*children, scales)

    @property
    def vocab_size(self) -> int:
        return jnp.shape(self.initial)[0]

    @property
    def length(self) -> int:
        return sum(self.scales)

    def _rows(self, tokens) -> jax.Array:
        """(batch, L, V) log p(token | its parent) for every candidate token: π for map 1, else the row
        P_{k−1}[parent] (``tokens`` at the parents must be real tokens)."""
        maps, parents = map_index(self.scales), parent_index(self.scales)
        parent_tokens = jnp.take(tokens, np.maximum(parents, 0), axis=1)          # (batch, L)
        rows = self.transitions[np.maximum(maps - 1, 0)[None, :], parent_tokens]  # (batch, L, V)
        return jnp.where((parents < 0)[None, :, None], self.initial, rows)

    def log_prob(self, tokens) -> jax.Array:
        """(batch,) exact log p of canvases ``tokens`` (batch, L)."""
        tokens = jnp.asarray(tokens)
        return jnp.sum(jnp.take_along_axis(self._rows(tokens), tokens[..., None], axis=-1)[..., 0], axis=1)

    def sample(self, key, n: int) -> jax.Array:
        """(n, L) int32 canvases drawn map by map."""
        checks.positive_int("n", n)
        tokens = jnp.zeros((n, self.length), jnp.int32)
        maps = map_index(self.scales)
        for k, step_key in enumerate(jax.random.split(key, len(self.scales))):
            drawn = jax.random.categorical(step_key, self._rows(tokens)).astype(jnp.int32)
            tokens = jnp.where(maps[None, :] == k, drawn, tokens)
        return tokens

    def marginals(self) -> jax.Array:
        """(K, V) log-probabilities of one token of each map (π pushed through the transitions)."""
        logs = [self.initial]
        for k in range(len(self.scales) - 1):
            logs.append(jax.nn.logsumexp(logs[-1][:, None] + self.transitions[k], axis=0))
        return jnp.stack(logs)

    def next_scale_denoiser(self) -> Callable:
        """``denoiser_fn(tokens, t) -> logits`` (batch, L, V) for :func:`itscale.hybrid.var`: the exact
        p(r_{k,i} | r_<k) = P_{k−1}[parent(i)] at a position whose parent is a token (ids >= V are masks),
        and the marginal law of its map where the parent is masked (the exact conditional when no token of a finer map is
        given either: what next-scale prediction asks of it). Ignores ``t``."""
        parents, maps = parent_index(self.scales), map_index(self.scales)
        vocab = self.vocab_size

        def denoiser_fn(tokens, t):
            known = (jnp.take(tokens, np.maximum(parents, 0), axis=1) < vocab) | (parents < 0)[None]
            rows = self._rows(jnp.where(tokens < vocab, tokens, 0))
            return jnp.where(known[..., None], rows, self.marginals()[maps][None])

        return denoiser_fn
