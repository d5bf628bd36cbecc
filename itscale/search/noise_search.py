"""Noise search over any refinement sampler: random search and zero-order search (Ma et al. 2025,
"Inference-time scaling for diffusion models beyond scaling denoising steps", arXiv 2501.09732, sec. 3.2).

Both search the initial noise of a refinement sampler (one with a ``prior``: ODE, SDE, DDIM/DDPM) for
an output that ``reward_fn`` scores highly, with a static budget of ``nfe_budget`` network evaluations
per query. Run them like every width strategy: ``its.run(search, key, x, num_steps=K)``, ``x`` of shape
(batch, ...) the queries' own noise, ``K`` the base sampler's number of steps.

**Random search** (:func:`random_search`) is best-of-N with N planned from the budget:
N = ⌊B / (K · nfe_per_step)⌋ noises per query, each denoised, the best kept. It *is*
:func:`itscale.search.best_of_n.best_of_n` with ``nfe_budget=B``.

**Zero-order search** (:func:`zero_order_search`): hill climbing in noise space. Round 1 draws n
noises from the prior (best-of-N: candidate 0 of a query is its own noise) and keeps the best as the
pivot n*. Each later round draws n neighbours of the pivot and denoises them; the pivot moves to the
best neighbour if it scores strictly higher. Neighbours follow the paper's neighbourhood of radius λ
around the pivot, on the sphere of the pivot's norm (where a Gaussian draw concentrates; DESIGN.md):

    n' = ‖n*‖ · (u + λ·w) / √(1 + λ²),   u = n* / ‖n*‖,   w a uniform unit vector ⟂ u,

i.e. n* + λ‖n*‖w projected back onto the sphere of radius ‖n*‖: the angle to the pivot is atan(λ)
(λ = 1/3: cos ≈ 0.95), and ‖n'‖ = ‖n*‖, so a neighbour of a typical draw of the prior N(0, σ²I) has a
typical norm too. λ lives in ``params.lam`` (traced); λ = 0 re-runs the pivot itself (useful with a
stochastic base sampler, pointless with an ODE).

Budget split (``output.split``): n candidates per round × ``rounds`` rounds × K steps × nfe_per_step,
n = ``num_neighbors`` or the largest that fits (:func:`itscale.search.plan_width` with ``rounds``).
A sampler making exactly nfe_per_step calls per step spends ``stats.nfe`` = batch × nfe_bound.

Design (one ``its.run`` loop of ``num_steps = K``, the base sampler's steps, as for every strategy).
Round 1 runs in the loop itself: one base step per run step on batch·n rows, with the run's keys and
contexts, exactly as :func:`best_of_n` does; with ``rounds=1`` the search *is* best-of-N, bit for bit.
Later rounds are sequential (each needs the pivot of the one before), so they run inside the last run
step, under :func:`itscale.core.counting.cond` (taken at that step only): a ``counting.scan`` over the
rounds, each initialising the base sampler on its n neighbours per query and running its K steps with
a ``counting.scan`` (``StepContext(j, K)``). NFE and verifier calls are therefore counted exactly, and
memory is O(batch × n × state): one round's rows, the pivot and the last round's outputs, never a
trajectory. Rewards: ``batch · n`` verifier calls per round.

Output (:class:`itscale.search.SearchOutput`): with ``rounds=1`` the n candidates of best-of-N; with
``rounds > 1`` the pivot the last round searched around (candidate 0: ties keep it, as hill climbing
moves only on a strict improvement) followed by the last round's n neighbours. ``info``:
``best_noise`` (batch, ...), the initial noise of the chosen output, and ``round_best_scores``
(batch, rounds), the best reward of each round. NaN / +inf rewards are invalid verdicts, read as −inf
and counted in ``invalid_rewards``; a query whose rewards are all −inf keeps candidate 0 of round 1 as
its pivot and ends with ``valid`` False, ``best_score`` −inf, no NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from itscale.core import checks, counting
from itscale.core.keys import step_key
from itscale.core.sampler import Sampler, StepContext, init_state, start_context, validate, watched
from itscale.core.weights import takes_models
from itscale.refine.sde import check_noise
from itscale.search.best_of_n import best_of_n, repeat_queries
from itscale.search.output import search_output, take_index, verdicts
from itscale.search.split import SearchSplit, declared_nfe_per_step, plan_width

_ROUNDS_STREAM = 0x20F5  # fold-in constant: the later rounds' keys, apart from the last base step's
_FINITE = float(np.finfo(np.float64).max)


@takes_models
def random_search(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int,
                  nfe_per_step: int | None = None) -> Sampler:
    """Random search over initial noise: ``best_of_n(sampler, reward_fn, nfe_budget=nfe_budget)``.

    N = ⌊nfe_budget / (K · nfe_per_step)⌋ candidates per query for a run of K steps; see the module doc.
    """
    return best_of_n(sampler, reward_fn, nfe_budget=nfe_budget, nfe_per_step=nfe_per_step)


class ZeroOrderParams(NamedTuple):
    """Traced hyper-parameters: the base sampler's ``params`` and λ, the neighbourhood radius (≥ 0)."""

    base: Any
    lam: Any = 1.0 / 3.0


class ZeroOrderState(NamedTuple):
    """base: round 1's base state on batch·n rows; noise: their initial noise; split: the plan (int32);
    slots: an empty (n, 0) array carrying the static n; result: what the later rounds found (candidates,
    scores, their noise and the best score of each round), filled at the last step (rounds > 1; None
    otherwise); invalid_rewards: NaN / +inf verdicts so far."""

    base: Any
    noise: jax.Array
    split: SearchSplit
    slots: jax.Array
    result: Any
    invalid_rewards: jax.Array


class _Found(NamedTuple):
    """Candidates per query (leaves (batch, width, ...)), their scores (−inf for invalid), their initial
    noise, and the best score of each round (batch, rounds)."""

    candidates: Any
    scores: jax.Array
    noise: jax.Array
    round_best: jax.Array


def neighbours(key, pivot: jax.Array, lam, n: int) -> jax.Array:
    """n neighbours of each pivot (leading batch axis): n' = ‖n*‖ (u + λ w) / √(1 + λ²), u = n*/‖n*‖,
    w uniform on the unit sphere ⟂ u (norms over all non-batch axes). Rows b·n … b·n + n − 1 are the
    neighbours of pivot b. A zero pivot gives zero neighbours; in one dimension w = 0."""
    dtype = jnp.promote_types(pivot.dtype, jnp.float32)
    batch = pivot.shape[0]
    p = pivot.astype(dtype).reshape(batch, 1, -1)
    norm = jnp.linalg.norm(p, axis=-1, keepdims=True)
    u = p / jnp.where(norm > 0, norm, 1.0)
    eps = jax.random.normal(key, (batch, n, p.shape[-1]), dtype)
    w = eps - jnp.sum(eps * u, axis=-1, keepdims=True) * u
    w_norm = jnp.linalg.norm(w, axis=-1, keepdims=True)
    w = w / jnp.where(w_norm > 0, w_norm, 1.0)
    lam = jnp.asarray(lam, dtype)
    out = norm * (u + lam * w) / jnp.sqrt(1.0 + lam**2)
    return out.reshape((batch * n,) + pivot.shape[1:]).astype(pivot.dtype)


def run_steps(sampler: Sampler, key, state, params, start, length: int, num_steps: int):
    """``length`` base steps from grid index ``start`` (traced) of a ``num_steps``-step grid, in a
    ``counting.scan``; step j runs with ``StepContext(start + j, num_steps)`` and key ``fold_in(key, j)``."""
    def body(state, j):
        state, _ = sampler.step(step_key(key, j), state, StepContext(start + j, num_steps), params)
        return state, None

    return counting.scan(body, state, jnp.arange(length, dtype=jnp.int32))[0]


def scored(reward: Callable, outputs, rows: int) -> tuple[jax.Array, jax.Array]:
    """``(scores, invalid)``: ``reward(outputs)`` checked to be of shape (rows,), NaN / +inf read as −inf,
    and the number of such invalid verdicts (int32)."""
    scores, invalid = verdicts(reward(outputs), rows)
    return scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), invalid


def per_query(tree, n: int):
    """Leaves (batch·n, ...) as (batch, n, ...)."""
    return jax.tree.map(lambda a: a.reshape((a.shape[0] // n, n) + a.shape[1:]), tree)


def _promote(pivot, candidates, n: int):
    """The pivot ``(noise, output, score)`` per query, replaced by the best of ``candidates`` (rows
    batch·n, same layout) where that scores strictly higher."""
    noise, outputs, scores = per_query(candidates, n)
    index = jnp.argmax(scores, axis=1)
    best = take_index((noise, outputs, scores), index, 1)
    better = best[2] > pivot[2]
    return jax.tree.map(lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                        best, pivot)


_check_lam = checks.param_ranges(lam=(0.0, _FINITE))


@takes_models
def zero_order_search(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, rounds: int,
                      num_neighbors: int | None = None, lam: float = 1.0 / 3.0,
                      nfe_per_step: int | None = None) -> Sampler:
    """Zero-order search around the best initial noise; see the module docstring.

    Args:
      sampler: a refinement :class:`itscale.Sampler` with a ``prior`` (its state leads with the batch axis).
      reward_fn: batch -> scores of shape (batch,), higher is better; −inf marks impossible outputs.
      nfe_budget: static NFE per query, at least rounds × K × nfe_per_step (one candidate per round).
      rounds: static number of rounds (1: random search / best-of-N).
      num_neighbors: static candidates per round n; default the largest the budget allows.
      lam: default of ``params.lam``, the neighbourhood radius λ (tan of the angle to the pivot).
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
    params: :class:`ZeroOrderParams` ``(base, lam)``.
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (batch,)")
    if sampler.prior is None:
        raise ValueError("zero_order_search perturbs initial noise: sampler must be a refinement sampler with "
                         "a prior (its.refine.ode / sde / ddpm); for a token sampler use best_of_n")
    budget = checks.positive_int("nfe_budget", nfe_budget)
    rounds = checks.positive_int("rounds", rounds)
    fixed = None if num_neighbors is None else checks.positive_int("num_neighbors", num_neighbors)
    checks.in_range("lam", lam, 0.0, _FINITE)
    per_step = declared_nfe_per_step(sampler, nfe_per_step)
    reward = counting.counted(reward_fn, kind="verifier")

    def plan(num_steps: int) -> SearchSplit:
        split = plan_width(budget, num_steps=num_steps, nfe_per_step=per_step, rounds=rounds)
        if fixed is None:
            return split
        bound = fixed * num_steps * per_step * rounds
        if bound > budget:
            raise ValueError(f"nfe_budget={budget} is too small for num_neighbors={fixed}: {fixed} candidates "
                             f"per round over rounds={rounds} rounds of num_steps={num_steps} steps of "
                             f"nfe_per_step={per_step} NFE cost {bound}; give nfe_budget >= {bound} or "
                             f"num_neighbors <= {split.width}")
        return split._replace(nfe_bound=bound, width=fixed, num_groups=fixed)

    def found_like(base, noise, n: int) -> _Found:
        """Zeros shaped like the later rounds' result (placeholders until the last step)."""
        outputs = counting.eval_shape(sampler.finalize, base)
        scores = counting.eval_shape(lambda s: scored(reward, sampler.finalize(s), noise.shape[0])[0], base)
        batch = noise.shape[0] // n
        zeros = lambda a, width: jnp.zeros((batch, width) + a.shape[1:], a.dtype)  # noqa: E731
        return _Found(jax.tree.map(lambda a: zeros(a, n + 1), outputs), zeros(scores, n + 1),
                      zeros(noise, n + 1), jnp.zeros((batch, rounds), scores.dtype))

    def init(key, x, params, ctx=None):
        if ctx is None:
            raise ValueError("zero_order_search plans its width from the run's num_steps: run it with "
                             "its.run(..., num_steps=K), K the base sampler's steps")
        check_noise("x", x)
        split = plan(ctx.num_steps)
        n = split.width
        noise = repeat_queries(sampler, key, x, n)
        base = init_state(sampler, key, noise, params.base, ctx)
        result = found_like(base, noise, n) if rounds > 1 else None
        return ZeroOrderState(base, noise, split.as_arrays(), jnp.zeros((n, 0), jnp.int8), result,
                              jnp.zeros((), jnp.int32))

    def later_rounds(key, noise, base, params, num_steps: int, n: int):
        """Rounds 2 … rounds after round 1 ended in ``base`` (from ``noise``): ``(_Found, invalid)``."""
        outputs = sampler.finalize(base)
        scores, invalid = scored(reward, outputs, noise.shape[0])
        first = take_index(per_query((noise, outputs, scores), n), jnp.zeros(noise.shape[0] // n, jnp.int32), 1)
        pivot = first[:2] + (jnp.full_like(first[2], -jnp.inf),)    # candidate 0 until something scores
        key = jax.random.fold_in(key, _ROUNDS_STREAM)

        def one_round(carry, r):
            pivot, candidates, invalid = carry
            pivot = _promote(pivot, candidates, n)
            round_key = jax.random.fold_in(key, r)
            noise = neighbours(jax.random.fold_in(round_key, 0), pivot[0], params.lam, n)
            state = init_state(sampler, jax.random.fold_in(round_key, 1), noise, params.base,
                               start_context(num_steps))
            state = run_steps(sampler, jax.random.fold_in(round_key, 2), state, params.base, 0, num_steps,
                              num_steps)
            outputs = sampler.finalize(state)
            scores, bad = scored(reward, outputs, noise.shape[0])
            return (pivot, (noise, outputs, scores), invalid + bad), per_query(scores, n).max(axis=1)

        (pivot, last, invalid), best = counting.scan(one_round, (pivot, (noise, outputs, scores), invalid),
                                                     jnp.arange(1, rounds, dtype=jnp.int32))
        noise_l, outputs_l, scores_l = per_query(last, n)
        join = lambda p, c: jnp.concatenate([p[:, None], c], axis=1)  # noqa: E731
        round_best = jnp.concatenate([per_query(scores, n).max(axis=1)[:, None], best.T], axis=1)
        return _Found(jax.tree.map(join, pivot[1], outputs_l), join(pivot[2], scores_l),
                      join(pivot[0], noise_l), round_best), invalid

    def step(key, state, ctx, params):
        base, info = sampler.step(key, state.base, ctx, params.base)
        state = state._replace(base=base)
        if rounds > 1:
            n = state.slots.shape[0]
            kept = (state.result, state.invalid_rewards)
            result, invalid = counting.cond(
                ctx.step == ctx.num_steps - 1,
                lambda s: jax.tree.map(lambda new, old: new.astype(old.dtype),
                                       later_rounds(key, s.noise, s.base, params, ctx.num_steps, n), kept),
                lambda s: kept, state)
            state = state._replace(result=result, invalid_rewards=invalid)
        return state, info

    def finalize(state):
        n = state.slots.shape[0]
        invalid = state.invalid_rewards
        if rounds == 1:
            outputs = sampler.finalize(state.base)
            scores, invalid = scored(reward, outputs, state.noise.shape[0])
            scores = per_query(scores, n)
            found = _Found(per_query(outputs, n), scores, per_query(state.noise, n), scores.max(axis=1)[:, None])
        else:
            found = state.result
        out = search_output(found.candidates, found.scores, split=state.split, invalid_rewards=invalid)
        info = {"best_noise": take_index(found.noise, out.best_index, 1), "round_best_scores": found.round_best}
        return out._replace(info=info)

    def check(x, params):
        _check_lam(x, params)
        validate(sampler, x, params.base)

    return Sampler(init, step, finalize, ZeroOrderParams(sampler.params, lam),
                   lambda state: (watched(sampler, state.base), state.noise), sampler.prior, check,
                   nfe_per_step=sampler.nfe_per_step)
