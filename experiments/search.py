"""Study: width strategies over diffusion / flow models, at equal NFE per query.

``python -m experiments.search [--full] [--out results/search]`` writes ``search.md`` (tables),
``search.json`` (every figure) and PNG plots, atomically; each (study, task, base, strategy, budget)
cell is a :class:`experiments.common.Sweep` entry stored when computed, so a rerun computes only the
missing cells. Cells of strategies whose module is not importable yet are skipped with a note (and
not stored), so they are computed by the first run after the module lands.

1. **Exact targets.** A Gaussian mixture p (``its.models.GaussianMixture``) tilted by the reward
   r(x) = -½‖x − c‖²: the target p(x) exp(λ r(x)) / Z is again a mixture, known exactly with log Z
   (``GaussianMixture.tilted(c, λ I)``). Difficulty grows with λ and with the target mass on the minor
   mode (c is solved so that the tilted law puts exactly that mass there); d = 2 and d = 16. Base
   sampler: the reverse SDE of the exact velocity on the linear path (``its.refine.sde``, Kim et al.
   2025, arXiv 2503.19385). Per strategy and NFE budget per query: expected reward of what the method
   returns; its error against the exact tilted law (log Ẑ − log Z where the method estimates it; mean,
   covariance and mode-mass errors of its output measure); diversity (mean pairwise distance of the
   outputs of different queries, over that of exact tilted draws).
2. **Kim et al.'s comparison.** {linear-ODE, linear-SDE, VP-SDE (interpolant conversion,
   ``its.refine.convert_path``)} × {BoN, search over paths, SMC, SVDD, RBF} at equal NFE on one reward,
   with a verdict on their ordering VP-SDE > linear-SDE > linear-ODE and "RBF best".
3. **Real data.** The unconditional flow-matching MLP on scikit-learn's 8×8 digits
   (``experiments.digits_models.load_or_train``, cached on disk) steered towards one class with the
   classifier's r(x) = log p(y = c | x) (``itscale.verifiers.digits.class_log_prob``): noise search
   (best-of-N, zero-order) on the Euler ODE, the other strategies on the reverse SDE; per NFE budget:
   reward, hit rate (classifier arg-max = c), feature distance to held-out digits of c
   (``feature_distance``), diversity of the queries' outputs, and a sample grid (PNG). Its cells live
   in their own sweep file (``search_digits_<digest>.json``, :class:`DigitsConfig`).

The output measure of a method, per query: a search (best-of-N, noise / path search, SVDD, RBF)
returns one sample (weight 1 on ``output.best``); a weighted method (SMC, anything whose
:class:`itscale.search.SearchOutput` has ``log_weights``) returns its particles with their normalised
weights. Law-level errors pool the measures of all queries (each query weighs 1 / Q).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from experiments.common import StudyResult, Sweep, markdown_table, save_figure, study_main
from itscale.search.best_of_n import repeat_queries
from itscale.search.split import declared_nfe_per_step, plan_width

NAME = "search"
LINEAR = its.paths.linear()


# ---------------------------------------------------------------------------------------------- tasks

class Task(NamedTuple):
    """A tilted mixture of graded difficulty: dimension, tilt strength λ, target mass on the minor mode."""

    dim: int
    lam: float
    minor_mass: float

    @property
    def name(self) -> str:
        return f"d={self.dim}, lam={self.lam:g}, minor mass {self.minor_mass:g}"


class Target(NamedTuple):
    """The prior mixture, the reward's centre, the exact tilted law and its log Z."""

    prior: Any
    center: np.ndarray
    tilted: Any
    log_z: float


def base_mixture(dim: int):
    """Three modes with weights (0.6, 0.3, 0.1) in the first two coordinates, covariance 0.25 I; the
    last, lightest mode is the minor one."""
    means = np.zeros((3, dim))
    means[:, :2] = [[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]
    return its.models.GaussianMixture(jnp.array([0.6, 0.3, 0.1]), jnp.asarray(means, jnp.float32),
                                      jnp.tile(0.25 * jnp.eye(dim), (3, 1, 1)))


def tilt(gmm, center, lam: float):
    """(tilted mixture, log Z) of p(x) exp(-½ λ ‖x − c‖²)."""
    return gmm.tilted(jnp.asarray(center, gmm.means.dtype), lam * jnp.eye(gmm.dim, dtype=gmm.means.dtype))


def make_target(task: Task) -> Target:
    """Solve c on the segment from the heaviest to the minor mode's mean (extended beyond it) by bisection
    so that the tilted law puts ``task.minor_mass`` on the minor mode (monotone along the segment)."""
    gmm = base_mixture(task.dim)
    start, end = np.asarray(gmm.means[0]), np.asarray(gmm.means[-1])

    def minor(s):
        return float(tilt(gmm, start + s * (end - start), task.lam)[0].weights[-1])

    low, high = -1.0, 3.0
    if not minor(low) < task.minor_mass < minor(high):
        raise ValueError(f"minor_mass={task.minor_mass} is out of reach for lam={task.lam}")
    for _ in range(50):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if minor(mid) < task.minor_mass else (low, mid)
    center = start + 0.5 * (low + high) * (end - start)
    tilted, log_z = tilt(gmm, center, task.lam)
    return Target(gmm, center, tilted, float(log_z))


def quadratic_reward(center) -> Callable:
    """r(x) = -½ ‖x − c‖², batched over the leading axis."""
    center = jnp.asarray(center)
    return lambda x: -0.5 * jnp.sum((x - center.astype(x.dtype)) ** 2, axis=-1)


def exact_reward(target: Target) -> float:
    """E_tilted[r] = -½ Σ_k w_k (‖μ_k − c‖² + tr Σ_k), exactly."""
    t = target.tilted
    sq = np.sum((np.asarray(t.means) - target.center) ** 2, axis=1) + np.trace(np.asarray(t.covs), axis1=1, axis2=2)
    return float(-0.5 * np.sum(np.asarray(t.weights) * sq))


# ---------------------------------------------------------------------------------------------- bases

BASE_PATHS = {"linear-ODE": LINEAR, "linear-SDE": LINEAR, "VP-SDE": its.paths.vp()}


def base_samplers(velocity: Callable) -> dict[str, its.Sampler]:
    """Kim et al.'s three samplers of one linear-path velocity model: the Euler ODE, the reverse SDE with
    the same marginals (g = 3 t²) and the SDE after interpolant conversion to the VP path."""
    vp = BASE_PATHS["VP-SDE"]
    return {"linear-ODE": its.refine.ode(velocity, solver="euler", path=LINEAR),
            "linear-SDE": its.refine.sde(velocity, LINEAR),
            "VP-SDE": its.refine.sde(its.refine.convert_path(velocity, LINEAR, vp), vp)}


# ---------------------------------------------------------------------------------------- strategies

class Build(NamedTuple):
    """What a registry entry builds on: the base sampler and its path, the model (a velocity on the
    linear path; TDS runs it on ``path``, which is the linear path wherever TDS is run), the reward,
    the NFE budget per query, the base steps, the tilt λ and the number of queries."""

    base: its.Sampler
    model: Callable
    path: Any
    reward: Callable
    nfe_budget: int
    num_steps: int
    lam: float
    num_queries: int


class Strategy(NamedTuple):
    """A registry entry: ``build(module, b: Build) -> (sampler, particles)``; the sampler runs on the
    queries' noise (Q, ...) when ``particles`` is None, else on (Q, particles, ...) (one query's particles
    per row, :func:`its.particles`). ``fixed_budget``: a budget of its own (plain sampling), run once."""

    label: str
    module: str
    build: Callable
    fixed_budget: bool = False


def _by_budget(function: str, **options) -> Callable:
    """Entries following the shared convention ``function(base, reward, nfe_budget=B, **options)``;
    an option given as a callable of the :class:`Build` is evaluated on it (e.g. α = 1 / λ)."""
    def build(module, b: Build):
        values = {k: v(b) if callable(v) else v for k, v in options.items()}
        return getattr(module, function)(b.base, b.reward, nfe_budget=b.nfe_budget, **values), None
    return build


def _plain(module, b: Build):
    return module.best_of_n(b.base, b.reward, num_candidates=1), None


def _particle_count(b: Build, nfe_per_step: int) -> int:
    return plan_width(b.nfe_budget, num_steps=b.num_steps, nfe_per_step=nfe_per_step).width


def _smc(module, b: Build):
    """FK steering with N = the largest particle count that fits the budget; λ = the task's tilt."""
    n = _particle_count(b, declared_nfe_per_step(b.base))
    return its.particles(module.smc(b.base, b.reward, num_particles=n, lam=b.lam), b.num_queries), n


def _twisted(module, b: Build):
    """TDS on the model's own DDPM chain (one NFE per particle and step), N fitted to the budget."""
    n = _particle_count(b, 1)
    return its.particles(module.twisted_smc(b.model, b.path, b.reward, num_particles=n, lam=b.lam),
                         b.num_queries), n


NEIGHBOURS = 4      # zero-order search: candidates per round (the rest of the budget buys rounds)


def _zero_order(module, b: Build):
    """Zero-order search (Ma et al. 2025, arXiv 2501.09732) scales by iterating: R = ⌊B / (4·K·p)⌋ rounds
    of at least 4 candidates (R = 1, best-of-N, when B buys fewer than 8 full samples); the width is
    planned from what is left."""
    rounds = max(1, b.nfe_budget // (NEIGHBOURS * b.num_steps * declared_nfe_per_step(b.base)))
    return module.zero_order_search(b.base, b.reward, nfe_budget=b.nfe_budget, rounds=rounds), None


STRATEGIES: dict[str, Strategy] = {
    "plain": Strategy("plain sampling (1 sample)", "itscale.search.best_of_n", _plain, fixed_budget=True),
    "bon": Strategy("best-of-N", "itscale.search.best_of_n", _by_budget("best_of_n")),
    "zero_order": Strategy("zero-order noise search (rounds of 4)", "itscale.search.noise_search", _zero_order),
    "path_search": Strategy("search over paths (2 rounds, 2 branches)", "itscale.search.path_search",
                            _by_budget("path_search", rounds=2, branch=2, renoise_step=2, path=lambda b: b.path)),
    "smc": Strategy("SMC / FK steering", "itscale.search.smc", _smc),
    "tds": Strategy("TDS (twisted SMC)", "itscale.search.twisted", _twisted),
    "svdd": Strategy("SVDD (alpha = 1/lam)", "itscale.search.svdd", _by_budget("svdd", alpha=lambda b: 1.0 / b.lam)),
    "code": Strategy("CoDe (blocks of 5, alpha = 1/lam)", "itscale.search.code",
                     _by_budget("code", block_size=5, alpha=lambda b: 1.0 / b.lam)),
    "rbf": Strategy("RBF (rollover budget forcing)", "itscale.search.rbf", _by_budget("rbf")),
}

KIM_STRATEGIES = ("bon", "path_search", "smc", "svdd", "rbf")
KIM_ORDER = ("VP-SDE", "linear-SDE", "linear-ODE")     # Kim et al.'s ordering, best first


def load(name: str):
    """The strategy's module, or None if it is not importable (yet)."""
    try:
        return importlib.import_module(STRATEGIES[name].module)
    except ImportError:
        return None


class Measure(NamedTuple):
    """What a method returns for Q queries: points (Q, W, d) with normalised weights (Q, W); its log Ẑ per
    query (or None); one output per query (Q, d); NFE and verifier calls per query (measured)."""

    points: np.ndarray
    weights: np.ndarray
    log_z: np.ndarray | None
    outputs: np.ndarray
    nfe_per_query: float
    verifier_per_query: float
    width: int


def measure_of(output, key) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(points, weights, log Ẑ, one output per query) of a run's output (see the module docstring): a
    weighted output gives its particles and weights and draws each query's output from them, a search
    gives weight 1 to its best candidate."""
    log_w = getattr(output, "log_weights", None)
    if log_w is None:
        points = np.asarray(output.candidates)
        weights = np.eye(points.shape[1])[np.asarray(output.best_index)]
        return points, weights, None, np.asarray(output.best)
    points = np.asarray(output.particles)
    chosen = np.asarray(jax.random.categorical(key, jnp.asarray(log_w), axis=-1))
    weights = np.asarray(jax.nn.softmax(jnp.asarray(log_w), axis=-1), np.float64)
    log_z = None if output.log_normalizer is None else np.asarray(output.log_normalizer, np.float64)
    return points, weights, log_z, points[np.arange(points.shape[0]), chosen]


def run_strategy(name: str, b: Build, x, key) -> Measure:
    """Build the registry entry ``name`` on ``b`` and run it on the queries' noise ``x`` (Q, d)."""
    q = x.shape[0]
    sampler, width = STRATEGIES[name].build(load(name), b._replace(num_queries=q))
    noise = x if width is None else repeat_queries(b.base, key, x, width).reshape((q, width) + x.shape[1:])
    result = its.run(sampler, key, noise, num_steps=b.num_steps)
    points, weights, log_z, outputs = measure_of(result.output, jax.random.fold_in(key, 1))
    return Measure(points, weights, log_z, outputs, int(result.stats.nfe) / q,
                   int(result.stats.verifier_calls) / q, points.shape[1])


# ------------------------------------------------------------------------------------------- metrics

def mode_masses(tilted, points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mass of the pooled measure on each component (a point belongs to the component of the
    tilted mixture with the highest responsibility log w_k + log N(x; μ_k, Σ_k)); queries weigh 1 / Q each."""
    flat = points.reshape(-1, points.shape[-1]).astype(np.float64)
    log_w = np.log(np.asarray(tilted.weights, np.float64))
    means, covs = np.asarray(tilted.means, np.float64), np.asarray(tilted.covs, np.float64)
    scores = []
    for lw, mean, cov in zip(log_w, means, covs):
        centred = flat - mean
        maha = np.sum(centred * np.linalg.solve(cov, centred.T).T, axis=-1)
        scores.append(lw - 0.5 * (maha + np.linalg.slogdet(cov)[1]))
    owner = np.argmax(np.stack(scores), axis=0)
    w = weights.reshape(-1) / points.shape[0]
    return np.bincount(owner, weights=w, minlength=len(log_w))


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over distinct pairs of rows of ``x`` (n, d)."""
    x = np.asarray(x, np.float64)
    if x.shape[0] < 2:
        return float("nan")
    d = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, axis=-1), 0.0))
    n = x.shape[0]
    return float(d.sum() / (n * (n - 1)))


def law_errors(target: Target, reward: Callable, m: Measure, exact_spread: float) -> dict:
    """The figures of one cell: expected reward, errors against the exact tilted law, diversity."""
    w = m.weights / m.points.shape[0]                                     # pooled: sum = 1
    flat, wf = m.points.reshape(-1, m.points.shape[-1]).astype(np.float64), w.reshape(-1)
    mean = wf @ flat
    centred = flat - mean
    cov = (centred * wf[:, None]).T @ centred
    exact_mean, exact_cov = np.asarray(target.tilted.mean()), np.asarray(target.tilted.covariance())
    masses = mode_masses(target.tilted, m.points, m.weights)
    rewards = np.asarray(reward(jnp.asarray(m.points.reshape(-1, m.points.shape[-1])))).reshape(m.weights.shape)
    per_query = np.sum(m.weights * rewards, axis=1)
    out = {"reward": float(per_query.mean()), "reward_se": float(per_query.std() / np.sqrt(len(per_query))),
           "mean_error": float(np.linalg.norm(mean - exact_mean)),
           "cov_error": float(np.linalg.norm(cov - exact_cov) / np.linalg.norm(exact_cov)),
           "mode_tv": float(0.5 * np.abs(masses - np.asarray(target.tilted.weights)).sum()),
           "minor_mass": float(masses[-1]),
           "diversity": mean_pairwise_distance(m.outputs) / exact_spread,
           "nfe_per_query": m.nfe_per_query, "verifier_per_query": m.verifier_per_query, "width": m.width,
           "log_z_bias": None, "log_z_rmse": None}
    if m.log_z is not None:
        err = m.log_z - target.log_z
        out.update(log_z_bias=float(err.mean()), log_z_rmse=float(np.sqrt(np.mean(err ** 2))))
    return out


# ---------------------------------------------------------------------------------------- configuration

class StudyConfig(NamedTuple):
    """Static sizes. ``tasks``: study 1's tilted mixtures; ``budgets``: NFE per query; ``table_budget``:
    the budget of the tables (study 1) and of study 2; ``kim_task``: the reward of study 2."""

    tasks: tuple = (Task(2, 1.0, 0.5), Task(2, 4.0, 0.9), Task(16, 1.0, 0.5), Task(16, 4.0, 0.9))
    budgets: tuple = (100, 1000, 10000)
    table_budget: int = 1000
    kim_task: Task = Task(2, 4.0, 0.9)
    num_queries: int = 256
    num_steps: int = 20
    exact_samples: int = 2000
    seed: int = 0
    strategies: tuple | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._asdict(), sort_keys=True).encode()).hexdigest()[:12]


def config(quick: bool) -> StudyConfig:
    """Quick: one 2-d task, two budgets, 16 queries, 10 steps (seconds); full: the four tasks, 1e2-1e4."""
    if not quick:
        return StudyConfig()
    return StudyConfig(tasks=(Task(2, 4.0, 0.9),), budgets=(100, 400), table_budget=400, num_queries=16,
                       num_steps=10, exact_samples=256)


def selected(cfg: StudyConfig) -> list[str]:
    names = list(STRATEGIES) if cfg.strategies is None else list(cfg.strategies)
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; accepted: {sorted(STRATEGIES)}")
    return names


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """A task's exact target, reward, base samplers and queries (hashed by identity: cached per Setup)."""

    task: Task
    target: Target
    reward: Callable
    model: Callable          # the exact velocity on the linear path
    bases: dict
    queries: dict            # base name -> (Q, d) initial noise
    exact_spread: float


def make_setup(cfg: StudyConfig, task: Task) -> Setup:
    target = make_target(task)
    velocity = target.prior.velocity(LINEAR)
    bases = base_samplers(velocity)
    key = jax.random.key(cfg.seed)
    zeros = jnp.zeros((cfg.num_queries, task.dim))
    queries = {name: b.prior(jax.random.fold_in(key, i), zeros) for i, (name, b) in enumerate(bases.items())}
    spread = mean_pairwise_distance(np.asarray(target.tilted.sample(jax.random.fold_in(key, 99), cfg.exact_samples)))
    return Setup(task, target, quadratic_reward(target.center), velocity, bases, queries, spread)


def compute_cell(setup: Setup, cfg: StudyConfig, base: str, strategy: str, budget: int) -> dict:
    """One cell: run the strategy at ``budget`` NFE per query and measure it against the exact law."""
    b = Build(setup.bases[base], setup.model, BASE_PATHS[base], setup.reward, budget, cfg.num_steps, setup.task.lam, 0)
    m = run_strategy(strategy, b, setup.queries[base], jax.random.key(cfg.seed + 1))
    return {"strategy": strategy, "base": base, "budget": budget,
            **law_errors(setup.target, setup.reward, m, setup.exact_spread)}


class Skip(NamedTuple):
    strategy: str
    base: str
    budget: int
    reason: str


def sweep_cells(sweep: Sweep, setup_of: Callable[[], Setup], cfg: StudyConfig, prefix: str, base: str,
                strategies: list[str], budgets) -> tuple[list[dict], list[Skip]]:
    """Every (strategy, budget) cell on ``base``: stored cells are read, missing ones computed and
    stored; a strategy whose module is missing, or a budget below its minimum, is skipped with a note."""
    cells, skips = [], []
    for name in strategies:
        if load(name) is None:
            skips.append(Skip(name, base, 0, f"module {STRATEGIES[name].module} not available yet"))
            continue
        for budget in (budgets[:1] if STRATEGIES[name].fixed_budget else budgets):
            key = f"{prefix}|base={base}|{name}|B={budget}"
            try:
                cells.append(sweep.get_or_compute(key, lambda n=name, b=budget: compute_cell(
                    setup_of(), cfg, base, n, b)))
            except (ValueError, TypeError) as error:        # budget below the minimum, signature change
                skips.append(Skip(name, base, budget, f"{type(error).__name__}: {str(error).splitlines()[0]}"))
    return cells, skips


# ----------------------------------------------------------------------------------------------- verdicts

def ordering_verdict(values: dict[str, tuple[float, float]], order: tuple[str, ...]) -> str:
    """Whether mean values (value, standard error) follow ``order`` (best first): "holds" if every
    consecutive pair is strictly ordered beyond two standard errors of the difference, "reversed" if
    some pair is ordered the other way beyond that, else "tie (within 2 SE)"."""
    present = [name for name in order if name in values]
    if len(present) < 2:
        return "n/a"
    gaps = []
    for a, b in zip(present, present[1:]):
        (va, sa), (vb, sb) = values[a], values[b]
        gaps.append((va - vb) / max(np.hypot(sa, sb), 1e-12))
    if all(g > 2 for g in gaps):
        return "holds"
    if any(g < -2 for g in gaps):
        return "reversed"
    return "tie (within 2 SE)"


def best_verdict(values: dict[str, tuple[float, float]], name: str) -> str:
    """Whether ``name`` has the highest value ("best", "tied best" within 2 SE, or "not best")."""
    if name not in values or len(values) < 2:
        return "n/a"
    v, s = values[name]
    others = [(vo - v) / max(np.hypot(s, so), 1e-12) for n, (vo, so) in values.items() if n != name]
    if all(g < -2 for g in others):
        return "best"
    return "tied best" if all(g <= 2 for g in others) else "not best"


# ------------------------------------------------------------------------------------------------- study

def _setup_factory(cfg, task):
    return functools.cache(lambda: make_setup(cfg, task))


def _fmt(value, spec=".3g"):
    return "n/a" if value is None else format(value, spec)


def _exact_table(cells: list[dict], budget: int) -> str:
    rows = []
    for c in cells:
        if c["budget"] != budget and not STRATEGIES[c["strategy"]].fixed_budget:
            continue
        rows.append({"strategy": STRATEGIES[c["strategy"]].label, "NFE/query": c["nfe_per_query"],
                     "width": c["width"], "E[r]": f"{c['reward']:.3f} ± {c['reward_se']:.3f}",
                     "log Z bias": _fmt(c["log_z_bias"]), "log Z rmse": _fmt(c["log_z_rmse"]),
                     "mean err": c["mean_error"], "cov err (rel)": c["cov_error"], "mode TV": c["mode_tv"],
                     "minor mass": c["minor_mass"], "diversity": c["diversity"]})
    return markdown_table(rows)


def _skip_lines(skips: list[Skip]) -> list[str]:
    seen = dict.fromkeys(f"- {STRATEGIES[s.strategy].label} ({s.base}{f', B={s.budget}' if s.budget else ''}): "
                         f"{s.reason}" for s in skips)
    return ["Skipped:", "", *seen, ""] if seen else []


def exact_section(sweep: Sweep, cfg: StudyConfig, out_dir: pathlib.Path):
    lines, figures, plots = [], {}, []
    for task in cfg.tasks:
        setup_of = _setup_factory(cfg, task)
        cells, skips = sweep_cells(sweep, setup_of, cfg, f"exact|{task.name}", "linear-SDE", selected(cfg),
                                   cfg.budgets)
        info = sweep.get_or_compute(f"exact|{task.name}|target", lambda: _target_info(setup_of()))
        figures[task.name] = {"target": info, "cells": cells}
        lines += [f"### {task.name}", "",
                  f"Exact tilted law: log Z = {info['log_z']:.4f}, E[r] = {info['reward']:.4f}, minor-mode mass "
                  f"{info['minor_mass']:.3f}; reward centre {np.round(info['center'][:2], 3).tolist()}. Base: "
                  f"linear-SDE, {cfg.num_steps} steps, {cfg.num_queries} queries. Table at "
                  f"{cfg.table_budget} NFE per query.", "", _exact_table(cells, cfg.table_budget),
                  *_skip_lines(skips)]
        if cells:
            plots.append(_plot_exact(task, cells, info, out_dir))
    return lines, figures, plots


def _target_info(setup: Setup) -> dict:
    return {"log_z": setup.target.log_z, "reward": exact_reward(setup.target),
            "minor_mass": float(setup.target.tilted.weights[-1]), "center": setup.target.center,
            "weights": setup.target.tilted.weights, "exact_spread": setup.exact_spread}


def kim_rows(cells: list[dict], strategies) -> list[dict]:
    """One row per strategy: E[r] per base, the ordering verdict and whether RBF is best on each base."""
    order = KIM_ORDER
    rows = []
    for name in strategies:
        values = {c["base"]: (c["reward"], c["reward_se"]) for c in cells if c["strategy"] == name}
        if not values:
            continue
        row = {"strategy": STRATEGIES[name].label}
        row.update({base: f"{values[base][0]:.3f} ± {values[base][1]:.3f}" if base in values else "skipped"
                    for base in order})
        row["VP-SDE > linear-SDE > linear-ODE"] = ordering_verdict(values, order)
        rows.append(row)
    rbf = []
    for base in order:
        values = {c["strategy"]: (c["reward"], c["reward_se"]) for c in cells if c["base"] == base}
        rbf.append(f"{base}: {best_verdict(values, 'rbf') if 'rbf' in values else 'RBF not run'}")
    return rows + [{"strategy": "RBF best on each base?", "VP-SDE > linear-SDE > linear-ODE": "; ".join(rbf)}]


WHY = ("Why: the three samplers have the same marginals, so best-of-N (which only sees final samples) can "
       "differ between them only through discretisation error: a tie is the expected verdict there. "
       "Methods that act on intermediate states (SMC, SVDD, RBF, search over paths) need randomness after "
       "the first step: on the ODE, resampled copies of a particle stay identical, so SMC degenerates to "
       "importance sampling of its initial draws; the SDE branches them. The VP conversion changes where "
       "along the time grid the noise is injected (more at high noise levels), which Kim et al. credit for "
       "its larger search space; on a low-dimensional exact target that advantage can vanish.")


def kim_section(sweep: Sweep, cfg: StudyConfig, out_dir: pathlib.Path):
    task = cfg.kim_task
    setup_of = _setup_factory(cfg, task)
    names = [n for n in KIM_STRATEGIES if n in selected(cfg)]
    cells, skips = [], []
    for base in KIM_ORDER:
        c, s = sweep_cells(sweep, setup_of, cfg, f"kim|{task.name}", base, names, (cfg.table_budget,))
        cells += c
        skips += s
    rows = kim_rows(cells, names)
    lines = [f"Reward r(x) = -½‖x − c‖² on the task {task.name} (SMC uses λ = {task.lam:g}); "
             f"{cfg.table_budget} NFE per query, {cfg.num_steps} steps, {cfg.num_queries} queries; E[r] ± "
             "standard error over queries. Verdicts compare means two standard errors apart.", "",
             markdown_table(rows, ["strategy", "VP-SDE", "linear-SDE", "linear-ODE",
                                   "VP-SDE > linear-SDE > linear-ODE"]), "", WHY, "", *_skip_lines(skips)]
    return lines, {"cells": cells, "rows": rows}


# ------------------------------------------------------------------------------------------- digits

NOISE_SEARCH = ("plain", "bon", "zero_order")     # search over the initial noise of the ODE
DIGITS_STRATEGIES = ("plain", "bon", "zero_order", "path_search", "smc", "svdd", "rbf", "tds")


class DigitsConfig(NamedTuple):
    """Study 3's sizes: the digits models (:mod:`itscale.models.digits` configs), the target class, the
    tilt λ of the weighted methods (λ = 1: SMC / TDS target p(x | y = target), SVDD α = 1), NFE budgets
    per query, queries, steps, the ODE solver, samples shown per cell, and the model cache folder
    (``None``: :func:`experiments.digits_models.cache_dir`'s default; not part of the digest)."""

    flow: Any = None
    classifier: Any = None
    target: int = 3
    lam: float = 1.0
    budgets: tuple = (100, 300, 1000)
    num_queries: int = 64
    num_steps: int = 20
    solver: str = "euler"
    shown: int = 4
    seed: int = 0
    strategies: tuple = DIGITS_STRATEGIES
    cache: str | None = None

    def models(self):
        from itscale.models import digits
        return (self.flow or digits.FlowConfig(), self.classifier or digits.ClassifierConfig())

    def digest(self) -> str:
        flow, classifier = self.models()
        fields = {**self._asdict(), "flow": dataclasses.asdict(flow), "classifier": dataclasses.asdict(classifier)}
        del fields["cache"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def digits_config(quick: bool) -> DigitsConfig:
    """Quick: 8 queries, 10 steps, two budgets and four strategies on the full models; full: the default."""
    if not quick:
        return DigitsConfig()
    return DigitsConfig(budgets=(60, 200), num_queries=8, num_steps=10, strategies=("plain", "bon", "smc", "rbf"))


@dataclasses.dataclass(frozen=True, eq=False)
class DigitsSetup:
    """The trained models, the reward log p(target | x), the feature distance to held-out digits of the
    target class, the ODE and SDE samplers of the flow and the queries' noise."""

    models: Any
    reward: Any
    distance: Any
    bases: dict
    queries: Any


def make_digits_setup(cfg: DigitsConfig) -> DigitsSetup:
    from experiments.digits_models import load_or_train
    from itscale.verifiers import digits as digit_rewards

    models = load_or_train(*cfg.models(), directory=cfg.cache)
    references = models.data.test_x[models.data.test_y == cfg.target]
    bases = {"ODE": its.refine.ode(models.flow, solver=cfg.solver, path=LINEAR),
             "SDE": its.refine.sde(models.flow, LINEAR)}
    queries = bases["ODE"].prior(jax.random.key(cfg.seed), jnp.zeros((cfg.num_queries, models.flow.dim)))
    return DigitsSetup(models, digit_rewards.class_log_prob(models.classifier, cfg.target),
                       digit_rewards.feature_distance(models.classifier, references), bases, queries)


def digits_base(name: str) -> str:
    return "ODE" if name in NOISE_SEARCH else "SDE"


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std() / np.sqrt(len(values)))


def digits_figures(setup: DigitsSetup, target: int, outputs: np.ndarray) -> dict:
    """Reward log p(target | x), hit rate (classifier arg-max = target), feature distance to the held-out
    digits of the class and diversity (mean pairwise pixel distance) of one output per query."""
    x = jnp.asarray(outputs)
    logits = np.asarray(setup.models.classifier(x), np.float64)
    reward = logits[:, target] - np.asarray(jax.scipy.special.logsumexp(logits, axis=-1))
    hit = (np.argmax(logits, axis=-1) == target).astype(np.float64)
    (r, r_se), (h, h_se), (d, d_se) = _mean_se(reward), _mean_se(hit), _mean_se(setup.distance(x))
    return {"reward": r, "reward_se": r_se, "hit_rate": h, "hit_rate_se": h_se, "feature_distance": d,
            "feature_distance_se": d_se, "diversity": mean_pairwise_distance(outputs)}


def compute_digits_cell(setup: DigitsSetup, cfg: DigitsConfig, name: str, budget: int) -> dict:
    """One cell: the strategy at ``budget`` NFE per query on the flow's ODE (noise search) or SDE."""
    b = Build(setup.bases[digits_base(name)], setup.models.flow, LINEAR, setup.reward, budget, cfg.num_steps,
              cfg.lam, 0)
    m = run_strategy(name, b, setup.queries, jax.random.key(cfg.seed + 1))
    return {"strategy": name, "base": digits_base(name), "budget": budget, "nfe_per_query": m.nfe_per_query,
            "verifier_per_query": m.verifier_per_query, "width": m.width,
            **digits_figures(setup, cfg.target, m.outputs), "samples": m.outputs[:cfg.shown]}


def digits_reference(setup: DigitsSetup, cfg: DigitsConfig) -> dict:
    """The held-out digits of the target class as if they were outputs (their feature distance is 0 by
    construction; their reward, hit rate and diversity are the real data's)."""
    data = setup.models.data
    refs = data.test_x[data.test_y == cfg.target]
    return {"count": int(refs.shape[0]), **digits_figures(setup, cfg.target, refs),
            "flow_source": setup.models.flow_record.source, "flow_train_seconds": setup.models.flow_record.seconds,
            "classifier_accuracy": setup.models.classifier_record.metrics.get("heldout_accuracy")}


def _digits_table(cells: list[dict]) -> str:
    rows = [{"strategy": STRATEGIES[c["strategy"]].label, "base": c["base"], "NFE/query": c["nfe_per_query"],
             "width": c["width"], "reward log p": f"{c['reward']:.3f} ± {c['reward_se']:.3f}",
             "hit rate": f"{c['hit_rate']:.3f} ± {c['hit_rate_se']:.3f}",
             "feature dist": f"{c['feature_distance']:.3f} ± {c['feature_distance_se']:.3f}",
             "diversity": c["diversity"]}
            for c in sorted(cells, key=lambda c: (c["budget"], DIGITS_STRATEGIES.index(c["strategy"])
                                                  if c["strategy"] in DIGITS_STRATEGIES else 99))]
    return markdown_table(rows)


def digits_section(sweep: Sweep, cfg: DigitsConfig, out_dir: pathlib.Path):
    """Study 3: steer the unconditional digits flow towards ``cfg.target`` with each strategy."""
    try:
        importlib.import_module("experiments.digits_models")
    except ImportError:
        return ["Skipped: `experiments.digits_models` is not available yet."], {}
    setup_of = functools.cache(lambda: make_digits_setup(cfg))
    cells, skips = [], []
    for name in cfg.strategies:
        if load(name) is None:
            skips.append(Skip(name, digits_base(name), 0, f"module {STRATEGIES[name].module} not available yet"))
            continue
        for budget in (cfg.budgets[:1] if STRATEGIES[name].fixed_budget else cfg.budgets):
            try:
                cells.append(sweep.get_or_compute(f"digits|{name}|B={budget}", lambda n=name, b=budget:
                                                  compute_digits_cell(setup_of(), cfg, n, b)))
            except (ValueError, TypeError) as error:
                skips.append(Skip(name, digits_base(name), budget,
                                  f"{type(error).__name__}: {str(error).splitlines()[0]}"))
    ref = sweep.get_or_compute("digits|reference", lambda: digits_reference(setup_of(), cfg))
    grid = _plot_digits(cells, cfg, out_dir) if cells else None
    lines = [f"Target class {cfg.target}; reward r(x) = log p(y = {cfg.target} | x) of the classifier "
             f"(held-out accuracy {_fmt(ref['classifier_accuracy'])}); the flow is unconditional (linear path, "
             f"{cfg.num_steps} steps). Best-of-N and zero-order search run on the {cfg.solver} ODE (search over "
             f"initial noise), the others on the reverse SDE (g = 3t²); SMC / TDS target p(x) r-tilted with "
             f"λ = {cfg.lam:g} (p(x | y = {cfg.target})), SVDD selects with α = 1/λ. {cfg.num_queries} queries; "
             "one output per query (a weighted method draws it from its weights). hit rate: classifier arg-max "
             f"= {cfg.target}; feature dist: min distance in the classifier's penultimate features to the "
             f"{ref['count']} held-out digits of the class (lower: closer to real digits); diversity: mean "
             "pairwise pixel distance of the queries' outputs. Held-out digits of the class themselves: "
             f"log p = {ref['reward']:.3f}, hit rate {ref['hit_rate']:.3f}, diversity {ref['diversity']:.3f}.",
             "", _digits_table(cells), *_skip_lines(skips)]
    if grid:
        lines += [f"Samples (first {cfg.shown} queries; rows: strategies, columns: NFE budget per query):", "",
                  f"![digits samples]({grid})", ""]
    return lines, {"cells": cells, "reference": ref, "grid": grid}


def _plot_digits(cells: list[dict], cfg: DigitsConfig, out_dir: pathlib.Path) -> str:
    """The grid picture: one row per strategy, one column per budget, ``cfg.shown`` 8×8 samples per cell."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(c["strategy"] for c in cells))
    fig, axes = plt.subplots(len(names), len(cfg.budgets), figsize=(2.2 * len(cfg.budgets), 0.75 * len(names) + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for c in cells:
        row, col = names.index(c["strategy"]), cfg.budgets.index(c["budget"])
        images = np.clip((np.asarray(c["samples"], np.float64) + 1.0) * 8.0, 0.0, 16.0).reshape(-1, 8, 8)
        gap = np.full((8, 1), np.nan)
        strip = np.concatenate([part for image in images for part in (image, gap)][:-1], axis=1)
        ax = axes[row, col]
        ax.imshow(strip, cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
        ax.set_title(f"{c['nfe_per_query']:.0f} NFE, hit {c['hit_rate']:.2f}", fontsize=7)
    for row, name in enumerate(names):
        axes[row, 0].text(-1.5, 3.5, STRATEGIES[name].label, ha="right", va="center", fontsize=7)
    fig.suptitle(f"digits flow steered to class {cfg.target}", fontsize=9)
    return save_figure(fig, out_dir / f"{NAME}_digits_grid.png")


def study(out_dir: pathlib.Path, *, quick: bool, cfg: StudyConfig | None = None,
          digits_cfg: DigitsConfig | None = None) -> StudyResult:
    """All sections (see the module docstring); resumes from the sweep files of ``cfg`` and ``digits_cfg``."""
    cfg = config(quick) if cfg is None else cfg
    digits_cfg = digits_config(quick) if digits_cfg is None else digits_cfg
    out_dir = pathlib.Path(out_dir)
    sweep = Sweep(out_dir / f"{NAME}_{cfg.digest()}.json")
    exact_lines, exact_figures, plots = exact_section(sweep, cfg, out_dir)
    kim_lines, kim_figures = kim_section(sweep, cfg, out_dir)
    digit_lines, digit_figures = digits_section(Sweep(out_dir / f"{NAME}_digits_{digits_cfg.digest()}.json"),
                                                digits_cfg, out_dir)
    markdown = "\n".join(["### 1. Exact targets: tilted Gaussian mixtures", "",
                          "E[r]: mean reward of the returned measure; log Z bias / rmse: log Ẑ − log Z over "
                          "queries (methods that estimate it); mean err: ‖mean − exact‖; cov err: relative "
                          "Frobenius error; mode TV: total variation between mode masses and the exact "
                          "tilted weights; minor mass: mass on the minor mode; diversity: mean pairwise "
                          "distance of the queries' outputs over that of exact tilted draws.", "",
                          *exact_lines, "### 2. Kim et al. (arXiv 2503.19385): sampler x strategy", "",
                          *kim_lines, "### 3. Real data: digits", "", *digit_lines])
    figures = {"exact": exact_figures, "kim": kim_figures, "digits": digit_figures}
    return StudyResult("Width axis: search over diffusion / flow models", markdown, figures, plots)


def _plot_exact(task: Task, cells: list[dict], info: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in dict.fromkeys(c["strategy"] for c in cells):
        mine = sorted((c for c in cells if c["strategy"] == name), key=lambda c: c["nfe_per_query"])
        nfe = [c["nfe_per_query"] for c in mine]
        for ax, field in zip(axes, ("reward", "mode_tv", "diversity")):
            ax.plot(nfe, [c[field] for c in mine], "o-", label=STRATEGIES[name].label)
    axes[0].axhline(info["reward"], color="k", ls=":", lw=1, label="exact tilted law")
    axes[2].axhline(1.0, color="k", ls=":", lw=1)
    for ax, title in zip(axes, ("E[r] of the output", "mode-mass TV to the tilted law", "diversity / exact")):
        ax.set_xscale("log")
        ax.set_xlabel("NFE per query (stats.nfe)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(task.name, fontsize=10)
    slug = f"d{task.dim}_lam{task.lam:g}_m{task.minor_mass:g}".replace(".", "p")
    return save_figure(fig, out_dir / f"{NAME}_exact_{slug}.png")


def main(argv: list[str] | None = None) -> None:
    study_main(study, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
