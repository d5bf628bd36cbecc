"""Search over paths (Ma et al. 2025, "Inference-time scaling for diffusion models beyond scaling
denoising steps", arXiv 2501.09732, sec. 3.2), over any refinement sampler.

The paper's algorithm: (1) sample N noises and denoise them to an intermediate noise level; (2) for each
sample draw M noises and simulate the *forward* noising process from that level up by Δf; (3) denoise
the N·M children down by Δb > Δf, score them with the verifier and keep the top N; repeat (2)–(3)
until the solver reaches t = 0; (4) keep the best of the last samples. Here, on the base sampler's grid
of K steps t_0 = t_max > … > t_K = t_min (grid indices; ``path`` and ``grid`` must be the base
sampler's):

* ``num_paths`` = N paths per query, ``branch`` = M children per kept path, ``renoise_step`` = Δf in
  grid steps, ``rounds`` = R, and checkpoints c_0 < c_1 < … < c_{R−1} < c_R = K (default: evenly
  spaced, c_r = ⌊(r + 1)·K / (R + 1)⌋; need c_0 ≥ Δf).
* The N paths are denoised from index 0 to c_0. Round r = 1 … R: each kept path at c_{r−1} is re-noised
  to c_{r−1} − Δf by the path's forward transition, M times with independent noise,

      x_{t'} = a·x_t + √(σ(t')² − a²σ(t)²)·ε,  a = α(t')/α(t),  t = t_{c_{r−1}},  t' = t_{c_{r−1}−Δf},

  (exact for the forward process: if x_t ~ p_t then x_{t'} ~ p_{t'}), the base sampler is started
  afresh from x_{t'} (``init``) and the N·M children are denoised to c_r (Δb = Δf + c_r − c_{r−1}
  steps). For r < R they are scored on the denoised estimate x̂₀ reported by the step that reached
  c_r (``info["x0_hat"]``, the model's estimate at index c_r − 1: no extra network call; the sampler's
  ``finalize`` of the state if the step reports none) and the top N per query are kept (ties to the
  lowest index); for r = R they reach t_min and are scored on the output.

Zero reward makes every selection a fixed choice of index, independent of the values, so the returned
sample is distributed as the base sampler's output whenever the base sampler keeps the path's marginals.

Budget. Per query, with p = nfe_per_step:

    nfe_bound = N · p · (c_0 + M·(K − c_0) + M·R·Δf)

``num_paths`` is the largest N that fits ``nfe_budget`` unless given; a budget below one path (N = 1)
raises ``ValueError`` naming ``nfe_budget`` and the minimum. ``output.split``: width = N·M (rows of a
round), num_groups = N, group_width = M, rounds = R. Verifier calls: R·N·M per query.

Design (one ``its.run`` loop of ``num_steps = K``, the base sampler's steps, as for every strategy).
Run step i advances the paths one grid step: the N "trunk" rows for i < c_0, the N·M children after
(one ``counting.cond``). The step that reaches a checkpoint also branches, under ``counting.cond``:
it selects the parents (the trunk at c_0; the top N children later), re-noises them and re-denoises the
Δf steps back to the checkpoint with a ``counting.scan`` (``StepContext(c − Δf + j, K)``); the loop
then carries the children on to the next checkpoint. NFE and verifier calls are counted exactly; memory
is O(batch × N·(M + 1) × state), no trajectory. Output: :class:`itscale.search.SearchOutput` over the
final N·M children; ``info["checkpoints"]`` the grid indices c_0 … c_{R−1}. NaN / +inf rewards are
invalid verdicts: read as −inf, counted in ``invalid_rewards``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from itscale.core import checks, counting
from itscale.core.sampler import Sampler, init_state, start_context, watched
from itscale.core.weights import takes_models
from itscale.paths.path import Path
from itscale.refine.grid_times import grid_times, time_dtype
from itscale.refine.sde import check_noise
from itscale.search.best_of_n import repeat_queries
from itscale.search.noise_search import per_query, run_steps, scored
from itscale.search.output import search_output
from itscale.search.split import SearchSplit, declared_nfe_per_step

_RENOISE, _INIT, _STEPS = 0x9A7, 0x9A8, 0x9A9   # fold-in constants of a branching's three random uses
_NONE, _BRANCH, _SELECT = 0, 1, 2                # what the step reaching a grid index does there


class PathSearchState(NamedTuple):
    """trunk: base state of the N paths before the first branching (batch·N rows); children: base state
    of the N·M children (batch·N·M rows; a placeholder before c_0); split: the plan (int32 arrays);
    slots: an empty (N, M) array carrying the static N and M; checkpoints: c_0 … c_{R−1} (int32);
    invalid_rewards: NaN / +inf verdicts."""

    trunk: Any
    children: Any
    split: SearchSplit
    slots: jax.Array
    checkpoints: jax.Array
    invalid_rewards: jax.Array


class _Plan(NamedTuple):
    split: SearchSplit
    checkpoints: tuple[int, ...]
    actions: np.ndarray     # (K,): what the step reaching index i + 1 does


def renoise(path: Path, x, t, t_up, key):
    """x_{t'} = a x_t + √(σ(t')² − a² σ(t)²) ε with a = α(t')/α(t): the path's forward transition
    from t up to t' = ``t_up`` > t, in at least float32, returned in ``x``'s dtype."""
    dtype = time_dtype(x.dtype)
    t, t_up = jnp.asarray(t, dtype), jnp.asarray(t_up, dtype)
    a = path.alpha(t_up) / path.alpha(t)
    std = jnp.sqrt(jnp.maximum(path.sigma(t_up) ** 2 - (a * path.sigma(t)) ** 2, 0.0))
    eps = jax.random.normal(key, x.shape, dtype)
    return (a * x.astype(dtype) + std * eps).astype(x.dtype)


def _checkpoints(given, num_steps: int, rounds: int, renoise_step: int) -> tuple[int, ...]:
    """The R checkpoints on a K-step grid: ``given`` or evenly spaced; checked against K and Δf."""
    if given is None:
        if num_steps < rounds + 1:
            raise ValueError(f"path_search with rounds={rounds} needs num_steps >= rounds + 1 = {rounds + 1} "
                             f"grid steps (one per checkpoint and the last stretch), got num_steps={num_steps}")
        cps = tuple((r + 1) * num_steps // (rounds + 1) for r in range(rounds))
    else:
        cps = tuple(checks.positive_int("checkpoints[i]", c) for c in given)
        if len(cps) != rounds or any(b <= a for a, b in zip(cps, cps[1:])) or cps[-1] >= num_steps:
            raise ValueError(f"checkpoints must be {rounds} (= rounds) increasing grid indices below "
                             f"num_steps={num_steps}, got {tuple(given)}")
    if cps[0] < renoise_step:
        raise ValueError(f"renoise_step={renoise_step} re-noises above the grid's start: the first checkpoint "
                         f"is grid index {cps[0]} (num_steps={num_steps}, rounds={rounds}); use renoise_step <= "
                         f"{cps[0]}, more num_steps, or later checkpoints")
    return cps


@takes_models
def path_search(sampler: Sampler, reward_fn: Callable, *, nfe_budget: int, rounds: int, branch: int,
                renoise_step: int, path: Path, grid="uniform", num_paths: int | None = None,
                checkpoints: tuple[int, ...] | None = None, nfe_per_step: int | None = None) -> Sampler:
    """Search over paths of ``sampler`` (re-noise, branch, denoise, keep the best); see the module doc.

    Args:
      sampler: a refinement :class:`itscale.Sampler` with a ``prior``, whose state is a NamedTuple with
        the current sample in field ``x`` and whose steps read their time from ``StepContext``.
      reward_fn: batch -> scores of shape (batch,), higher is better; −inf marks impossible outputs.
      nfe_budget: static NFE per query (see the module docstring for the cost of a path).
      rounds: R, the number of branchings (≥ 1). branch: M, children per kept path (≥ 1).
      renoise_step: Δf, how many grid steps each re-noising goes back up (≥ 1).
      path, grid: the base sampler's :class:`itscale.paths.Path` and grid (kind name, ``Grid`` or times).
      num_paths: N, kept paths per query; default the largest the budget allows.
      checkpoints: R increasing grid indices c_0 … c_{R−1} in [renoise_step, K); default evenly spaced.
      nfe_per_step: NFE of one base step per row, if the sampler does not declare it.
    params: the base sampler's.
    """
    checks.sampler("sampler", sampler)
    checks.function("reward_fn", reward_fn, "batch -> scores of shape (batch,)")
    if sampler.prior is None:
        raise ValueError("path_search starts from initial noise: sampler must be a refinement sampler with a "
                         "prior (its.refine.ode / sde / ddpm)")
    checks.path("path", path, context=" (the base sampler's path)")
    budget = checks.positive_int("nfe_budget", nfe_budget)
    rounds = checks.positive_int("rounds", rounds)
    branch = checks.positive_int("branch", branch)
    renoise_step = checks.positive_int("renoise_step", renoise_step)
    fixed = None if num_paths is None else checks.positive_int("num_paths", num_paths)
    if checkpoints is not None:
        checkpoints = tuple(checkpoints)
        _checkpoints(checkpoints, checkpoints[-1] + 1 if checkpoints else 1, rounds, renoise_step)
    per_step = declared_nfe_per_step(sampler, nfe_per_step)
    times_rule = grid_times(grid, path)
    reward = counting.counted(reward_fn, kind="verifier")

    def plan(num_steps: int) -> _Plan:
        cps = _checkpoints(checkpoints, num_steps, rounds, renoise_step)
        first = cps[0]
        per_path = per_step * (first + branch * (num_steps - first) + branch * rounds * renoise_step)
        n = budget // per_path if fixed is None else fixed
        if n < 1 or n * per_path > budget:
            paths = "one path" if fixed is None else f"num_paths={fixed} paths"
            raise ValueError(
                f"nfe_budget={budget} is too small: {paths} of path_search (grid index 0 -> {first}, then "
                f"branch={branch} children over the remaining {num_steps - first} steps plus rounds={rounds} "
                f"re-noisings of renoise_step={renoise_step} steps, nfe_per_step={per_step}) cost "
                f"{max(n, 1) * per_path}; give nfe_budget >= {max(n, 1) * per_path}")
        actions = np.full((num_steps,), _NONE, np.int32)
        actions[first - 1] = _BRANCH
        actions[[c - 1 for c in cps[1:]]] = _SELECT
        split = SearchSplit(budget, n * per_path, 0, n * branch, n, branch, num_steps, per_step, rounds)
        return _Plan(split, cps, actions)

    def init(key, x, params, ctx=None):
        if ctx is None:
            raise ValueError("path_search plans its split from the run's num_steps: run it with "
                             "its.run(..., num_steps=K), K the base sampler's steps")
        check_noise("x", x)
        split, cps, _ = plan(ctx.num_steps)
        noise = repeat_queries(sampler, key, x, split.num_groups)
        trunk = init_state(sampler, key, noise, params, ctx)
        if not hasattr(trunk, "x"):
            raise TypeError("path_search re-noises the base state's field x: the sampler's state must be a "
                            f"NamedTuple with the current sample in field x, got {type(trunk).__name__}")
        children = init_state(sampler, key, jnp.repeat(noise, branch, axis=0), params, ctx)
        return PathSearchState(trunk, children, split.as_arrays(),
                               jnp.zeros((split.num_groups, branch), jnp.int8), jnp.asarray(cps, jnp.int32),
                               jnp.zeros((), jnp.int32))

    def branched(key, parents, at, params, num_steps: int):
        """The M children of every parent sample (rows in order) at grid index ``at`` (traced): re-noised
        to ``at − Δf`` and denoised back to ``at``."""
        x = jnp.repeat(parents, branch, axis=0)
        times = times_rule(num_steps, x.dtype)
        x = renoise(path, x, times[at], times[at - renoise_step], jax.random.fold_in(key, _RENOISE))
        state = init_state(sampler, jax.random.fold_in(key, _INIT), x, params, start_context(num_steps))
        return run_steps(sampler, jax.random.fold_in(key, _STEPS), state, params, at - renoise_step,
                         renoise_step, num_steps)

    def preview(state, info):
        if isinstance(info, Mapping) and "x0_hat" in info:
            return info["x0_hat"]
        return sampler.finalize(state)

    def step(key, state, ctx, params):
        num_steps, (n, m) = ctx.num_steps, state.slots.shape
        schedule = plan(num_steps)
        action = jnp.asarray(schedule.actions)[ctx.step]
        at = ctx.step + 1

        def on_trunk(trunk, children, invalid):
            trunk, _ = sampler.step(key, trunk, ctx, params)
            children = counting.cond(action == _BRANCH,
                                     lambda: branched(key, trunk.x, at, params, num_steps), lambda: children)
            return trunk, children, invalid

        def select(children, look, invalid):
            scores, bad = scored(reward, look, children.x.shape[0])
            _, top = lax.top_k(per_query(scores, n * m), n)                        # ties: lowest index
            parents = jnp.take_along_axis(per_query(children.x, n * m),
                                          top.reshape(top.shape + (1,) * (children.x.ndim - 1)), axis=1)
            parents = parents.reshape((-1,) + children.x.shape[1:])
            return branched(key, parents, at, params, num_steps), invalid + bad

        def on_children(trunk, children, invalid):
            children, info = sampler.step(key, children, ctx, params)
            children, invalid = counting.cond(action == _SELECT, select, lambda c, look, i: (c, i),
                                              children, preview(children, info), invalid)
            return trunk, children, invalid

        trunk, children, invalid = counting.cond(ctx.step < schedule.checkpoints[0], on_trunk, on_children,
                                                 state.trunk, state.children, state.invalid_rewards)
        return state._replace(trunk=trunk, children=children, invalid_rewards=invalid), {"checkpoint": action}

    def finalize(state):
        n, m = state.slots.shape
        outputs = sampler.finalize(state.children)
        scores, bad = scored(reward, outputs, jax.tree.leaves(outputs)[0].shape[0])
        return search_output(per_query(outputs, n * m), per_query(scores, n * m), split=state.split,
                             invalid_rewards=state.invalid_rewards + bad, info={"checkpoints": state.checkpoints})

    return Sampler(init, step, finalize, sampler.params,
                   lambda state: (watched(sampler, state.trunk), watched(sampler, state.children)),
                   sampler.prior, sampler.validate, nfe_per_step=sampler.nfe_per_step)
