"""Study: the four scaling claims of the seed documents, measured on analytic and small trained models.

``python -m experiments.scaling [--full] [--out results/scaling]`` writes ``scaling.md``, ``scaling.json``
and PNG plots. Every measured entry is a :class:`experiments.common.Sweep` point (``scaling_<digest>.json``,
keyed by the :class:`StudyConfig`), stored as soon as it is computed, so an interrupted run resumes and a
rerun recomputes nothing (the models are loaded only when an entry is missing).

1. **Linear cost.** FLOPs and wall clock against iterations on three axes: refinement steps (Euler ODE of
   the small digits flow), tokens (rollout length of the small arithmetic LM) and particles (best-of-N
   width over the flow's ODE, classifier reward). FLOPs are XLA's cost analysis of the *unrolled* program
   (init, n steps, finalize traced one after the other): the cost analysis of the rolled ``its.run``
   program counts a ``lax.scan`` body once, whatever its trip count (measured and shown for the
   refinement axis). Wall clock: median of repeats of the compiled ``its.run`` (warmed, blocked until
   ready). A least-squares line per axis; the claim holds on an axis if the FLOPs' R² >= 0.98.
2. **Power law.** Quality against NFE, q = a·NFE^(-b) (+ c), fitted by
   :func:`itscale.scaling.fit_power_law` with bootstrap 95% intervals (resampling queries / samples):
   an ODE solver's RMS error on an exact Gaussian mixture (the convergence study's problem, Dopri8
   reference, float64), best-of-N over the digits flow (error = -log p(target | best) of the classifier)
   and repeated sampling of the arithmetic LM (1 - pass@k, unbiased, with the coverage law of Brown et al.).
3. **Small vs large at matched FLOPs.** The small LM with search (majority vote, best-of-N with the
   learned outcome verifier; the exact checker as an oracle) against the >= 10x larger LM decoding
   greedily, per difficulty bucket; the number of samples is set by Snell et al.'s matched multiplier
   K = M + 3(M - 1) D_pre / D_inf with M the ratio of XLA-measured FLOPs per sequence; and the small digits
   flow with best-of-N against the large flow without search.
4. **Adaptive allocation.** Difficulty from the first samples of each query (answer agreement, whose
   samples count in the budget: they are the query's first candidates), quantile tiers calibrated on one
   half of the problems, :func:`itscale.scaling.plan_allocation` on the calibration curves, measured on
   the other half against :func:`itscale.scaling.uniform_allocation` and plain best-of-N; the matched
   adaptive and uniform plans executed on fresh samples, each as one compiled program
   (:func:`itscale.scaling.allocated_search` with exact width buckets: NFE counters and wall clock);
   per-tier telemetry (:func:`itscale.scaling.tier_summary`); and depth against width at equal NFE.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import itscale as its
from experiments import model_cache, scaling_models as sm
from experiments.bench.timing import time_fn
from experiments.common import (StudyResult, Sweep, jsonable, markdown_table, save_figure, study_main)
from experiments.scaling_models import ScalingConfig
from itscale.scaling import (agreement_difficulty, allocate, fit_power_law, flops_of, flops_per_call,
                             matched_inference_multiplier, masked_select, nearest_calibrated_tier,
                             plan_allocation, quantile_edges, query_cost, tier_summary, tiers_from_edges,
                             uniform_allocation)
from itscale.verifiers import arithmetic, digits as digit_rewards

NAME = "scaling"
LINEAR = its.paths.linear()
RULES = ("majority_vote", "best_of_n")          # allocation options (best-of-N reads the learned verifier)
LARGE = "large_greedy"                          # the routing option: the large LM, greedy
R2_THRESHOLD = 0.98
LOG_R2_THRESHOLD = 0.95


# ------------------------------------------------------------------------------------------ configuration

class StudyConfig(NamedTuple):
    """Sizes of the four sub-studies (static). ``models``: the trained models (``cache``: their folder,
    not part of the digest); ``classifier``: the digits classifier config (None: the default)."""

    models: ScalingConfig = ScalingConfig()
    classifier: Any = None
    cache: str | None = None
    seed: int = 0
    flops: str = "compiled"                 # XLA cost analysis of the "compiled" or the "lowered" program
    target: int = 3                         # digits class of the best-of-N power law
    # 1. linear cost
    cost_steps: tuple = (4, 8, 16, 32)
    cost_tokens: tuple = (2, 4, 8)
    cost_particles: tuple = (1, 2, 4, 8, 16)
    cost_width_steps: int = 4
    cost_batch: int = 64
    cost_repeats: int = 5
    # 2. power law
    solver_steps: tuple = (4, 8, 16, 32, 64)
    solver_batch: int = 512
    bon_widths: tuple = (1, 2, 4, 8, 16, 32)
    bon_queries: int = 64
    flow_steps: int = 16
    per_digits: int = 64                     # LM problems per digit count (the sample pool)
    pool_samples: int = 64                   # samples per problem
    temperature: float = 1.0
    bootstrap: int = 200
    # 3. matched
    digits_queries: int = 128
    # 4. adaptive
    probe: int = 4
    num_tiers: int = 3
    num_budgets: int = 24
    depth_width_nfe: int = 32
    depth_width: tuple = (1, 4, 8)
    depth_width_queries: int = 64

    def digest(self) -> str:
        fields = {**model_cache.plain(self), "classifier": model_cache.plain(self.classifier_config())}
        del fields["cache"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def classifier_config(self):
        from itscale.models import digits
        return self.classifier or digits.ClassifierConfig()


def config(quick: bool = False, tiny: bool = False) -> StudyConfig:
    """Full: the default sizes (about 4 minutes with cached models); quick: about a minute; tiny: seconds
    (sizes for the test, with the caller's tiny models)."""
    if tiny:
        return StudyConfig(cost_steps=(2, 4, 8), cost_tokens=(1, 2), cost_particles=(1, 2, 4), cost_width_steps=2,
                           cost_batch=8, solver_steps=(2, 4, 8), solver_batch=32,
                           cost_repeats=1, bon_widths=(1, 2, 4), bon_queries=8, flow_steps=4, per_digits=4, pool_samples=8,
                           bootstrap=20, digits_queries=8, probe=2, num_tiers=2, num_budgets=6,
                           depth_width_nfe=8, depth_width=(1, 4), depth_width_queries=4, flops="lowered")
    if quick:
        return StudyConfig(cost_steps=(4, 8, 16), cost_tokens=(1, 2, 4), cost_particles=(1, 2, 4, 8), cost_batch=32,
                           cost_repeats=3, solver_steps=(4, 8, 16, 32), solver_batch=256, bon_widths=(1, 2, 4, 8, 16),
                           bon_queries=32, flow_steps=8, per_digits=32, pool_samples=32, bootstrap=100,
                           digits_queries=64, num_budgets=16, depth_width_queries=32, flops="lowered")
    return StudyConfig()


# ------------------------------------------------------------------------------------------ models

class Models(NamedTuple):
    """The scaling models, the digits classifier and the digits data."""

    scaling: sm.ScalingModels
    classifier: Any
    data: Any


def load_models(cfg: StudyConfig) -> Models:
    """The models of ``cfg`` from the cache (trained if missing)."""
    from experiments import digits_models

    scaling = sm.load_or_train_all(cfg.models, directory=cfg.cache)
    digits = digits_models.load_or_train(cfg.models.flow_large, cfg.classifier_config(), directory=cfg.cache)
    return Models(scaling, digits.classifier, digits.data)


def model_summary(models: Models) -> dict:
    """Per scaling model: parameters, training seconds, loss per epoch and its held-out metrics."""
    return {name: {"params": t.num_params, "seconds": t.seconds, "losses": np.asarray(t.epoch_losses),
                   "metrics": {k: v for k, v in t.metrics.items() if not isinstance(v, (list, dict))}}
            for name, t in zip(models.scaling._fields, models.scaling)}


def model_rows(summary: dict) -> list[dict]:
    return [{"model": name, "parameters": m["params"], "training s": m["seconds"],
             "epochs": len(m["losses"]), "first loss": float(m["losses"][0]), "final loss": float(m["losses"][-1]),
             "held out": ", ".join(f"{k} {v:.4g}" for k, v in m["metrics"].items()) or "-"}
            for name, m in ((n, summary[n]) for n in sm.ScalingModels._fields)]    # stored JSON sorts keys


def _plot_models(summary: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    groups = {"arithmetic LMs": ("lm_small", "lm_large"), "digits flows": ("flow_small", "flow_large"),
              "outcome verifier": ("verifier",)}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, names) in zip(axes, groups.items()):
        for name in names:
            losses = np.asarray(summary[name]["losses"], float)
            ax.plot(np.arange(1, len(losses) + 1), losses, label=f"{name} ({summary[name]['params']:,} params)")
        ax.set(yscale="log", xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    return save_figure(fig, out_dir / f"{NAME}_training.png")


# ------------------------------------------------------------------------------------------ measurement

def unrolled_program(sampler: its.Sampler, num_steps: int) -> Callable:
    """``program(x, params, weights)``: init, ``num_steps`` steps and finalize traced one after another
    (no ``lax.scan``), the models' weights bound as ``its.run`` binds them; for XLA's cost analysis."""
    from itscale.core.keys import step_key
    from itscale.core.sampler import StepContext, init_state, start_context
    from itscale.core.weights import binding

    slots = tuple(slot for slot, _ in sampler.weights)

    def program(x, params, weights):
        with binding(zip(slots, weights)):
            init_key, loop_key = jax.random.split(jax.random.key(0))
            state = init_state(sampler, init_key, x, params, start_context(num_steps))
            for i in range(num_steps):
                step = jnp.asarray(i, jnp.int32)
                state, _ = sampler.step(step_key(loop_key, step), state, StepContext(step, num_steps), params)
            return sampler.finalize(state)

    return program


def unrolled_flops(sampler: its.Sampler, x, num_steps: int, mode: str = "compiled") -> float:
    """XLA's FLOP count of ``num_steps`` iterations of ``sampler`` from ``x`` (unrolled program): of the
    compiled program (:func:`itscale.scaling.flops_per_call`, after XLA's optimisations) or, with
    ``mode="lowered"``, of the lowered HLO before them (no compilation: seconds instead of minutes for an
    unrolled transformer rollout; a few percent lower, as fusion and layout passes add work)."""
    if mode not in ("compiled", "lowered"):
        raise ValueError(f"mode must be 'compiled' or 'lowered', got {mode!r}")
    args = (x, sampler.params, tuple(w for _, w in sampler.weights))
    return flops_of(jax.jit(unrolled_program(sampler, num_steps)).lower(*args), compiled=mode == "compiled")


def rolled_flops(sampler: its.Sampler, x, num_steps: int) -> float:
    """XLA's FLOP count of the compiled ``its.run`` program (its scan body is counted once)."""
    from itscale.core.run import lower

    return flops_of(lower(sampler, jax.random.key(0), x, num_steps=num_steps))


def linear_fit(x, y) -> dict:
    """Least-squares y = slope x + intercept, with R² = 1 - SS_res / SS_tot."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual ** 2) / total) if total > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def _run_output(sampler, key, x, n):
    return lambda: its.run(sampler, key, x, num_steps=n).output


def _lm_rollout(model, lm_cfg, temperature: float) -> its.Sampler:
    return its.tokens.rollout(model, temperature=temperature, eos_id=arithmetic.EOS, pad_id=arithmetic.PAD,
                              max_new_tokens=lm_cfg.completion_len, max_len=model.max_len)


def _flow_queries(cfg: StudyConfig, flow, count: int, salt: int):
    ode = its.refine.ode(flow, solver="euler", path=LINEAR)
    return ode.prior(jax.random.fold_in(jax.random.key(cfg.seed), salt), jnp.zeros((count, flow.dim)))


# ------------------------------------------------------------------------------------------ 1. linear cost

def cost_axis(models: Models, cfg: StudyConfig, axis: str) -> dict:
    """One axis of study 1: per iteration count, NFE (stats), FLOPs (unrolled XLA), median wall clock."""
    key = jax.random.key(cfg.seed + 11)
    flow = models.scaling.flow_small.model
    points = []
    if axis == "refinement":
        sampler = its.refine.ode(flow, solver="euler", path=LINEAR)
        x = _flow_queries(cfg, flow, cfg.cost_batch, 1)
        counts, make = cfg.cost_steps, lambda n: (sampler, n)
    elif axis == "tokens":
        lm = models.scaling.lm_small
        sampler = _lm_rollout(lm.model, lm.config, cfg.temperature)
        x = sm.heldout_problems(lm.config, max(1, cfg.cost_batch // (lm.config.max_digits - lm.config.min_digits + 1))
                                ).prompts
        counts, make = cfg.cost_tokens, lambda n: (sampler, n)
    elif axis == "particles":
        ode = its.refine.ode(flow, solver="euler", path=LINEAR)
        reward = digit_rewards.max_class_log_prob(models.classifier)
        x = _flow_queries(cfg, flow, max(1, cfg.cost_batch // 4), 2)
        counts = cfg.cost_particles
        make = lambda n: (its.search.best_of_n(ode, reward, num_candidates=n), cfg.cost_width_steps)  # noqa: E731
    else:
        raise ValueError(f"unknown axis {axis!r}")
    for n in counts:
        sampler_n, steps = make(n)
        result = its.run(sampler_n, key, x, num_steps=steps)
        point = {"iterations": int(n), "nfe": int(result.stats.nfe),
                 "verifier_calls": int(result.stats.verifier_calls),
                 "flops": unrolled_flops(sampler_n, x, steps, cfg.flops),
                 "seconds": time_fn(_run_output(sampler_n, key, x, steps), repeats=cfg.cost_repeats)}
        if axis == "refinement":
            point["flops_rolled"] = rolled_flops(sampler_n, x, steps)
        points.append(point)
    return {"axis": axis, "rows": int(jax.tree.leaves(x)[0].shape[0]), "points": points}


def cost_rows(axes: list[dict]) -> tuple[list[dict], dict]:
    rows, fits = [], {}
    for a in axes:
        it = [p["iterations"] for p in a["points"]]
        f, w = linear_fit(it, [p["flops"] for p in a["points"]]), linear_fit(it, [p["seconds"] for p in a["points"]])
        fits[a["axis"]] = {"flops": f, "seconds": w}
        holds = f["r2"] >= R2_THRESHOLD
        rows.append({"axis": a["axis"], "iterations": ", ".join(map(str, it)), "rows": a["rows"],
                     "FLOPs/iteration": f["slope"], "FLOPs R²": f["r2"], "s/iteration": w["slope"],
                     "wall-clock R²": w["r2"],
                     "verdict": (f"holds (FLOPs R² = {f['r2']:.4f} >= {R2_THRESHOLD})" if holds else
                                 f"fails: FLOPs R² = {f['r2']:.4f} < {R2_THRESHOLD}")
                                + ("" if w["r2"] >= R2_THRESHOLD else f"; wall clock not linear (R² = {w['r2']:.3f})")})
    return rows, fits


def _plot_cost(axes: list[dict], fits: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(axes), figsize=(4.3 * len(axes), 3.5), squeeze=False)
    for ax, a in zip(panels[0], axes):
        it = np.array([p["iterations"] for p in a["points"]], float)
        f = fits[a["axis"]]["flops"]
        ax.plot(it, [p["flops"] for p in a["points"]], "o", color="C0", label="XLA FLOPs (unrolled)")
        ax.plot(it, f["slope"] * it + f["intercept"], "-", color="C0", lw=1, label=f"fit R²={f['r2']:.4f}")
        if "flops_rolled" in a["points"][0]:
            ax.plot(it, [p["flops_rolled"] for p in a["points"]], "x:", color="C2", label="XLA FLOPs, rolled scan")
        ax.set(xlabel=f"{a['axis']} (iterations)", ylabel="FLOPs", title=a["axis"])
        twin = ax.twinx()
        twin.plot(it, [1e3 * p["seconds"] for p in a["points"]], "s--", color="C1", label="wall clock (ms)")
        twin.set_ylabel("median wall clock (ms)", color="C1")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("cost against iterations", fontsize=10)
    return save_figure(fig, out_dir / f"{NAME}_linear_cost.png")


# ------------------------------------------------------------------------------------------ 2. power law

def solver_errors(cfg: StudyConfig) -> dict:
    """Per solver and step count: NFE per sample and each sample's squared error against the Dopri8
    reference (the convergence study's d = 2 mixture on the linear path, float64)."""
    from experiments.convergence import Problem

    with jax.enable_x64(True):
        problem = Problem(2, "linear", cfg.solver_batch)
        samplers = {s: its.refine.ode(problem.velocity, s, grid=problem.grid, path=problem.path)
                    for s in ("euler", "heun")}

        @jax.jit
        def run_all(x):          # one compilation for every (solver, steps), as the convergence study does
            return {s: [its.run(sampler, jax.random.key(0), x, num_steps=n) for n in cfg.solver_steps]
                    for s, sampler in samplers.items()}

        reference = problem.reference
        return {s: [{"steps": n, "nfe": float(r.stats.nfe_per_sample),
                     "squared_error": np.asarray(jnp.sum((r.output - reference) ** 2, axis=-1))}
                    for n, r in zip(cfg.solver_steps, runs)] for s, runs in run_all(problem.x).items()}


def bon_scores(models: Models, cfg: StudyConfig) -> dict:
    """Best-of-N over the small flow's Euler ODE with r = log p(target | x): the best score per query, per N."""
    flow = models.scaling.flow_small.model
    ode = its.refine.ode(flow, solver="euler", path=LINEAR)
    reward = digit_rewards.class_log_prob(models.classifier, cfg.target)
    x = _flow_queries(cfg, flow, cfg.bon_queries, 3)
    searches = [its.search.best_of_n(ode, reward, num_candidates=n) for n in cfg.bon_widths]
    key = jax.random.key(cfg.seed + 5)
    results = [its.run(search, key, x, num_steps=cfg.flow_steps) for search in searches]
    return {"rows": [{"width": n, "nfe": float(r.stats.nfe) / cfg.bon_queries, "best_score": r.output.best_score}
                     for n, r in zip(cfg.bon_widths, results)]}


def sample_pool(models: Models, cfg: StudyConfig) -> dict:
    """``pool_samples`` samples of the small LM per held-out problem (``per_digits`` per digit count): their
    answers, exact correctness and learned-verifier logits; the problems' truth and difficulty."""
    lm = models.scaling.lm_small
    problems = sm.heldout_problems(lm.config, cfg.per_digits)
    n = cfg.pool_samples
    prompts = jnp.repeat(problems.prompts, n, axis=0)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 0x9001)
    sampler = _lm_rollout(lm.model, lm.config, cfg.temperature)
    result = its.run(sampler, key, prompts, num_steps=lm.config.completion_len)
    tokens = result.output.tokens
    correct = np.asarray(arithmetic.is_correct(prompts, tokens)).reshape(-1, n)
    answers = np.asarray(arithmetic.extract_answer(tokens)).reshape(-1, n)
    verify = nnx.jit(sm.OutcomeVerifier.__call__)
    scores = np.concatenate([np.asarray(verify(models.scaling.verifier.model, tokens[i:i + 4096]))
                             for i in range(0, tokens.shape[0], 4096)]).reshape(-1, n)
    level = sm.difficulty(problems.a, problems.b)
    return {"answers": answers, "correct": correct.astype(int), "scores": scores,
            "truth": np.asarray(problems.a + problems.b), "digits": level.digits, "carries": level.carries,
            "nfe_per_sample": float(result.stats.nfe) / prompts.shape[0]}


def bootstrap_law(compute, units: np.ndarray, reduce: Callable, *, offset: bool, reps: int, seed: int) -> dict:
    """fit_power_law(compute, reduce(units)) and 95% percentile intervals of a, b, c by resampling the
    rows of ``units`` (queries or samples) with replacement; R² of the fit in log space."""
    compute = np.asarray(compute, float)
    quality = reduce(units)
    try:
        law = fit_power_law(compute, quality, offset=offset)
    except ValueError as error:
        return {"law": None, "error": str(error), "compute": compute, "quality": quality}
    logs = np.log(np.maximum(quality - law.c, 1e-300))
    total = np.sum((logs - logs.mean()) ** 2)
    r2 = 1.0 - law.rmse_log ** 2 * logs.size / total if total > 0 else float("nan")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        sample = units[rng.integers(0, units.shape[0], units.shape[0])]
        try:
            draws.append(fit_power_law(compute, reduce(sample), offset=offset)[:3])
        except ValueError:
            continue
    draws = np.asarray(draws, float).reshape(-1, 3)
    ci = {name: ([float(np.percentile(draws[:, i], 2.5)), float(np.percentile(draws[:, i], 97.5))]
                 if len(draws) else [float("nan")] * 2) for i, name in enumerate("abc")}
    return {"law": law._asdict(), "ci": ci, "r2_log": r2, "bootstrap_fits": len(draws), "compute": compute,
            "quality": quality}


def pass_at_k_matrix(correct: np.ndarray, ks) -> np.ndarray:
    """Unbiased pass@k per problem (problems, len(ks)) from the pool's correctness."""
    n, c = correct.shape[1], correct.sum(axis=1).astype(np.int64)
    return np.stack([its.search.pass_at_k(n, c, int(k)) for k in ks], axis=1)


def coverage_ks(n: int) -> np.ndarray:
    from experiments.tokens import coverage_curve

    return coverage_curve(np.zeros(1, np.int64), n)[0]


def power_fits(solver: dict, bon: dict, pool: dict, cfg: StudyConfig) -> dict:
    fits = {}
    for name, rows in solver.items():
        errors = np.stack([np.asarray(r["squared_error"], float) for r in rows], axis=1)     # (samples, steps)
        fits[f"ODE solver ({name}): RMS error"] = bootstrap_law(
            [r["nfe"] for r in rows], errors, lambda u: np.sqrt(u.mean(axis=0)), offset=False, reps=cfg.bootstrap,
            seed=cfg.seed)
    best = np.stack([np.asarray(r["best_score"], float) for r in bon["rows"]], axis=1)        # (queries, widths)
    fits[f"best-of-N (digits flow): -log p({cfg.target} | best)"] = bootstrap_law(
        [r["nfe"] for r in bon["rows"]], -best, lambda u: u.mean(axis=0), offset=False, reps=cfg.bootstrap,
        seed=cfg.seed)
    ks = coverage_ks(cfg.pool_samples)
    per_problem = pass_at_k_matrix(np.asarray(pool["correct"]), ks)
    with np.errstate(divide="ignore"):
        fits["repeated sampling (arithmetic LM): -log pass@k"] = bootstrap_law(
            ks * pool["nfe_per_sample"], per_problem, lambda u: -np.log(u.mean(axis=0)), offset=False,
            reps=cfg.bootstrap, seed=cfg.seed)
    return fits


def power_verdict(fit: dict) -> tuple[bool, str]:
    if fit["law"] is None:
        return False, f"fails: no fit ({fit['error']})"
    low = fit["ci"]["b"][0]
    if fit["r2_log"] >= LOG_R2_THRESHOLD and low > 0:
        return True, f"holds (log-space R² = {fit['r2_log']:.3f}, b > 0 with 95% confidence)"
    why = []
    if fit["r2_log"] < LOG_R2_THRESHOLD:
        why.append(f"log-space R² = {fit['r2_log']:.3f} < {LOG_R2_THRESHOLD}")
    if not low > 0:
        why.append(f"b's interval reaches {low:.3g} <= 0")
    return False, "fails: " + "; ".join(why)


def power_rows(fits: dict) -> list[dict]:
    rows = []
    for name, fit in fits.items():
        ok, verdict = power_verdict(fit)
        law = fit["law"] or {}
        ci = fit.get("ci", {})
        rows.append({"quality q vs NFE": name, "NFE range": f"{min(fit['compute']):.4g}-{max(fit['compute']):.4g}",
                     "b": law.get("b"), "b 95% CI": _interval(ci.get("b")), "a": law.get("a"),
                     "floor c": law.get("c"), "log R²": fit.get("r2_log"), "verdict": verdict})
    return rows


def _interval(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def coverage_table(pool: dict, cfg: StudyConfig) -> tuple[list[dict], Any]:
    ks = coverage_ks(cfg.pool_samples)
    coverage = pass_at_k_matrix(np.asarray(pool["correct"]), ks).mean(axis=0)
    try:
        law = its.search.fit_coverage_law(ks, coverage)
    except ValueError:
        law = None
    rows = [{"k": int(k), "NFE/problem": float(k * pool["nfe_per_sample"]), "pass@k": float(c),
             "coverage law exp(a k^b)": None if law is None else float(law(k))} for k, c in zip(ks, coverage)]
    return rows, law


def _plot_power(fits: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 3.5), squeeze=False)
    for ax, (name, fit) in zip(panels[0], fits.items()):
        c, q = np.asarray(fit["compute"], float), np.asarray(fit["quality"], float)
        ax.loglog(c, np.maximum(q, 1e-300), "o", label="measured")
        if fit["law"]:
            law = its.scaling.PowerLaw(**fit["law"])
            grid = np.geomspace(c.min(), c.max(), 50)
            ax.loglog(grid, law(grid), "-", lw=1, label=f"b = {law.b:.2f} {_interval(fit['ci']['b'])}")
        ax.set(xlabel="NFE", title=name)
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir / f"{NAME}_power_law.png")


# ------------------------------------------------------------------------------------------ 3. matched FLOPs

def lm_flops(models: Models) -> dict:
    """XLA FLOPs of one full sequence (prompt + completion, no cache) through each LM and the verifier."""
    cfg = models.scaling.lm_small.config
    tokens = jnp.zeros((8, cfg.prompt_len + cfg.completion_len), jnp.int32)
    per_seq = {name: flops_per_call(lambda t, m=getattr(models.scaling, name).model: m(t), tokens) / 8
               for name in ("lm_small", "lm_large", "verifier")}
    return {**per_seq, "params": {name: getattr(models.scaling, name).num_params
                                  for name in ("lm_small", "lm_large", "verifier")}}


def large_greedy(models: Models, cfg: StudyConfig) -> dict:
    """The large LM's greedy correctness on the pool's problems."""
    lm = models.scaling.lm_large
    problems = sm.heldout_problems(lm.config, cfg.per_digits)
    tokens = sm.sample_completions(lm.model, lm.config, problems.prompts, temperature=0.0)
    return {"correct": np.asarray(arithmetic.is_correct(problems.prompts, tokens)).astype(int)}


def select_correct(pool: dict, width: int, rule: str) -> np.ndarray:
    """Per problem, whether the rule's choice among the first ``width`` samples is correct (the
    allocator's masked selection, so equal to selecting on those samples alone)."""
    answers, scores = jnp.asarray(pool["answers"]), jnp.asarray(pool["scores"], jnp.float32)
    q = answers.shape[0]
    if rule == "oracle":
        return np.asarray(pool["correct"])[:, :width].any(axis=1)
    chosen = masked_select(scores, jnp.full(q, width), jnp.zeros(q, jnp.int32), rules=(rule,), answers=answers)
    return np.asarray(chosen.answer) == np.asarray(pool["truth"])


def widths_up_to(n: int, start: int = 1) -> list[int]:
    out, w = [], start
    while w <= n:
        out.append(w)
        w *= 2
    return out


def matched_lm(pool: dict, large: dict, flops: dict, cfg: StudyConfig) -> dict:
    """Accuracy per bucket of the small LM's strategies at every width, their FLOPs per problem, the
    matched sample counts and the large LM's greedy accuracy."""
    lm = cfg.models.lm_small
    seq = lm.prompt_len + lm.completion_len
    f_small, f_large, f_ver = flops["lm_small"], flops["lm_large"], flops["verifier"]
    m = f_large / f_small
    q = len(pool["truth"])
    d_pre, d_inf = float(lm.train_steps * lm.batch_size * seq), float(q * seq)
    k_inf = matched_inference_multiplier(m, 0.0, d_inf)
    k_total = matched_inference_multiplier(m, d_pre, d_inf)
    cost = {"majority_vote": f_small, "best_of_n": f_small + f_ver, "oracle": f_small}
    matched = {}
    for label, k in (("inference only", k_inf), ("with pretraining", k_total)):
        matched[label] = {"K": k, "width": {rule: int(np.floor(k * f_small / c + 1e-9)) for rule, c in cost.items()}}
    exact = {min(w, cfg.pool_samples) for w in matched["inference only"]["width"].values() if w >= 1}
    widths = sorted(set(widths_up_to(cfg.pool_samples)) | exact)
    curves = {rule: {w: select_correct(pool, w, rule) for w in widths} for rule in cost}
    return {"f_small": f_small, "f_large": f_large, "f_verifier": f_ver, "M_flops": m,
            "M_params": flops["params"]["lm_large"] / flops["params"]["lm_small"], "D_pre": d_pre, "D_inf": d_inf,
            "matched": matched, "cost": cost, "widths": widths,
            "curves": {rule: {str(w): c.astype(int) for w, c in by.items()} for rule, by in curves.items()},
            "large": np.asarray(large["correct"]), "digits": np.asarray(pool["digits"])}


def _largest(curves: dict, rule: str, width: int) -> int:
    """The largest measured width <= ``width`` of ``rule`` (0 if none)."""
    return max((int(w) for w in curves[rule] if int(w) <= width), default=0)


def _at(curves: dict, rule: str, width: int) -> np.ndarray | None:
    """Correctness of ``rule`` at the largest measured width <= ``width`` (None if below 1)."""
    largest = _largest(curves, rule, width)
    return None if largest == 0 else np.asarray(curves[rule][str(largest)], bool)


def matched_rows(lm: dict) -> tuple[list[dict], dict]:
    """Per digits bucket: large greedy, the small LM's best realisable strategy (chosen on overall
    accuracy at the matched width) and the oracle, at inference-only matched FLOPs; the crossover."""
    curves, large, digits = lm["curves"], np.asarray(lm["large"], bool), np.asarray(lm["digits"])
    widths_inf = lm["matched"]["inference only"]["width"]
    chosen = {rule: _at(curves, rule, widths_inf[rule]) for rule in ("majority_vote", "best_of_n")}
    accuracy = {rule: float("nan") if c is None else float(c.mean()) for rule, c in chosen.items()}
    best = max(accuracy, key=lambda r: accuracy[r] if np.isfinite(accuracy[r]) else -1)
    w_best = _largest(curves, best, widths_inf[best])
    rows, summary = [], {"best_rule": best, "best_width": w_best, "capped": w_best < widths_inf[best]}
    buckets = [("all", np.ones_like(digits, bool))] + [(f"{d} digits", digits == d) for d in np.unique(digits)]
    for name, mask in buckets:
        small = _at(curves, best, widths_inf[best])[mask].mean()
        oracle = _at(curves, "oracle", widths_inf["oracle"])[mask].mean()
        big = large[mask].mean()
        cross = None
        for w in sorted(int(w) for w in curves[best]):
            if np.asarray(curves[best][str(w)], bool)[mask].mean() >= big:
                cross = w * lm["cost"][best] / lm["f_large"]
                break
        se = np.sqrt(max(big * (1 - big), small * (1 - small)) / max(mask.sum(), 1))
        if small >= big:
            verdict = "holds: small + search >= large greedy"
        elif big - small <= 2 * se:
            verdict = "tie (within 2 SE)"
        else:
            verdict = f"fails: {big - small:.2f} below large greedy"
        rows.append({"bucket": name, "problems": int(mask.sum()), "large greedy": float(big),
                     f"small {best} N={w_best}": float(small), f"small oracle N={_largest(curves, 'oracle', widths_inf['oracle'])}":
                         float(oracle),
                     "crossover (x large FLOPs)": "none up to "
                     f"{max(int(w) for w in curves[best]) * lm['cost'][best] / lm['f_large']:.2g}x" if cross is None
                     else f"{cross:.2g}x",
                     "verdict": verdict})
        summary[name] = {"small": float(small), "large": float(big), "oracle": float(oracle), "crossover": cross,
                         "holds": bool(small >= big)}
    return rows, summary


def matched_digits(models: Models, cfg: StudyConfig) -> dict:
    """Small flow + best-of-N (r = max_c log p(c | x)) against the large flow without search, at the
    inference FLOPs of the large flow (XLA FLOPs per NFE and per verifier call); plain small flow too."""
    from experiments.search import DigitsSetup, digits_figures

    small, large = models.scaling.flow_small.model, models.scaling.flow_large.model
    x = jnp.zeros((8, small.dim), jnp.float32)
    t = jnp.full((8,), 0.5, jnp.float32)
    f_small = flops_per_call(lambda x, t: small(x, t), x, t) / 8
    f_large = flops_per_call(lambda x, t: large(x, t), x, t) / 8
    f_cls = flops_per_call(lambda x: models.classifier(x), x) / 8
    steps = cfg.flow_steps
    width = max(1, int(np.floor(f_large * steps / (f_small * steps + f_cls))))
    reward = digit_rewards.max_class_log_prob(models.classifier)
    setup = DigitsSetup(models, reward, digit_rewards.feature_distance(models.classifier, models.data.test_x),
                        {}, None)
    queries = _flow_queries(cfg, small, cfg.digits_queries, 4)
    key = jax.random.key(cfg.seed + 6)
    out = {}
    for name, flow, n in (("large flow, no search", large, 1), ("small flow, no search", small, 1),
                          (f"small flow, best-of-{width}", small, width)):
        ode = its.refine.ode(flow, solver="euler", path=LINEAR)
        r = its.run(its.search.best_of_n(ode, reward, num_candidates=n), key, queries, num_steps=steps)
        f_flow = f_large if flow is large else f_small
        flops_q = steps * n * f_flow + (f_cls * n if n > 1 else 0.0)
        figures = digits_figures(setup, 0, np.asarray(r.output.best))          # class 0 fields are unused
        likeness = np.asarray(reward.evaluate(r.output.best))
        out[name] = {"width": n, "nfe_per_query": float(r.stats.nfe) / cfg.digits_queries, "flops_per_query": flops_q,
                     "likeness": float(likeness.mean()), "likeness_se": float(likeness.std() / np.sqrt(likeness.size)),
                     "feature_distance": figures["feature_distance"], "feature_distance_se": figures["feature_distance_se"],
                     "diversity": figures["diversity"]}
    return {"f_small": f_small, "f_large": f_large, "f_classifier": f_cls, "M_flops": f_large / f_small,
            "width": width, "steps": steps, "runs": out}


def digits_rows(d: dict) -> tuple[list[dict], bool, str]:
    runs = {n: d["runs"][n] for n in sorted(d["runs"], key=lambda n: (not n.startswith("large"), d["runs"][n]["width"]))}
    large = runs["large flow, no search"]
    rows = [{"model": name, "N": r["width"], "FLOPs/query": r["flops_per_query"],
             "x large FLOPs": r["flops_per_query"] / large["flops_per_query"],
             "max_c log p(c|x)": f"{r['likeness']:.3f} ± {r['likeness_se']:.3f}",
             "feature dist to held-out": f"{r['feature_distance']:.3f} ± {r['feature_distance_se']:.3f}",
             "diversity": r["diversity"]} for name, r in runs.items()]
    def compare(r) -> tuple[bool, str]:
        gap = r["feature_distance"] - large["feature_distance"]
        se = np.hypot(r["feature_distance_se"], large["feature_distance_se"])
        if gap < -2 * se:
            return True, "holds: closer to held-out digits than the large flow"
        if gap <= 2 * se:
            return False, "tie within 2 SE on feature distance (not better)"
        return False, f"fails: farther from held-out digits than the large flow (+{gap:.3f})"

    for row, r in zip(rows, runs.values()):
        row["verdict"] = "reference" if r is large else compare(r)[1]
    holds, verdict = compare(runs[[n for n in runs if "best-of" in n][0]])
    return rows, holds, verdict


def _plot_matched(lm: dict, summary: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    curves, digits, large = lm["curves"], np.asarray(lm["digits"]), np.asarray(lm["large"], bool)
    buckets = np.unique(digits)
    fig, panels = plt.subplots(1, len(buckets), figsize=(3.4 * len(buckets), 3.3), squeeze=False)
    for ax, d in zip(panels[0], buckets):
        mask = digits == d
        for rule in ("majority_vote", "best_of_n", "oracle"):
            w = sorted(int(w) for w in curves[rule])
            ax.plot([x * lm["cost"][rule] / lm["f_large"] for x in w],
                    [np.asarray(curves[rule][str(x)], bool)[mask].mean() for x in w], "o-", ms=3, label=f"small, {rule}")
        ax.axhline(large[mask].mean(), color="k", ls=":", label="large greedy")
        ax.axvline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="FLOPs / large greedy FLOPs", title=f"{d} digits", ylim=(-0.02, 1.02))
    panels[0][0].set_ylabel("accuracy")
    panels[0][-1].legend(fontsize=6)
    return save_figure(fig, out_dir / f"{NAME}_matched.png")


# ------------------------------------------------------------------------------------------ 4. adaptive

def adaptive(pool: dict, lm_info: dict, cfg: StudyConfig, *, route: bool = False) -> dict:
    """Calibrate tiers and curves on even problems, plan on the odd ones; uniform and best-of-N baselines.
    Costs in kFLOP per problem (the probe's samples are the first candidates, so they are counted).
    ``route``: the large LM decoding greedily is one more option, for uniform allocation (at width 1) and
    for the planner (after the probe, whose small-LM samples it does not reuse: k samples + 1 large call)."""
    answers, truth = np.asarray(pool["answers"]), np.asarray(pool["truth"])
    cal, test = np.arange(len(truth)) % 2 == 0, np.arange(len(truth)) % 2 == 1
    k = cfg.probe
    difficulty = np.asarray(agreement_difficulty(jnp.asarray(answers), k=k))
    edges = quantile_edges(jnp.asarray(difficulty[cal]), cfg.num_tiers)
    tiers = tiers_from_edges(jnp.asarray(difficulty), edges)
    tiers = np.asarray(nearest_calibrated_tier(tiers, tiers[cal], cfg.num_tiers))      # no curves elsewhere
    unit = {rule: max(1, int(round(lm_info["cost"][rule] / 1e3))) for rule in RULES}
    names = RULES + ((LARGE,) if route else ())
    widths_all = widths_up_to(cfg.pool_samples)
    adaptive_widths = [w for w in widths_all if w >= k]
    correct = {(o, w): select_correct(pool, w, rule) for o, rule in enumerate(RULES) for w in widths_all}
    costs_uniform = np.array([unit[r] for r in RULES], np.int64)
    costs_adaptive = costs_uniform
    if route:
        unit[LARGE] = max(1, int(round(lm_info["f_large"] / 1e3)))
        correct.update({(len(RULES), w): np.asarray(lm_info["large"], bool) for w in widths_all})
        costs_uniform = np.append(costs_uniform, unit[LARGE])
        probe_and_large = -(-(k * unit["majority_vote"] + unit[LARGE]) // k)      # per unit of width k, rounded up
        costs_adaptive = np.append(costs_adaptive, probe_and_large)

    def curves(mask, widths, large_width):
        acc = np.full((cfg.num_tiers, len(names), len(widths)), np.nan)
        for d in range(cfg.num_tiers):
            member = mask & (tiers == d)
            if member.any():
                for o, name in enumerate(names):
                    for g, w in enumerate(widths):
                        if name != LARGE or w == large_width:
                            acc[d, o, g] = correct[(o, w)][member].mean()
        return acc

    def measure(plan, mask, costs):
        width, option = (np.asarray(v) for v in allocate(plan, jnp.asarray(tiers[mask])))
        ok = np.array([correct[(int(o), int(w))][i] for o, w, i in zip(option, width, np.flatnonzero(mask))])
        spend = costs[option] * width
        return float(ok.mean()), float(spend.mean()), width, option, ok

    sizes = np.bincount(tiers[test], minlength=cfg.num_tiers).astype(np.int64)
    q_test = int(test.sum())
    acc_adaptive = curves(cal, adaptive_widths, k)
    acc_uniform = curves(cal, widths_all, 1)
    uniform = []
    for w in widths_all:
        budget = int(costs_uniform[:len(RULES)].max() * w * q_test)
        plan = uniform_allocation(acc_uniform[:, :, : widths_all.index(w) + 1], widths_all[: widths_all.index(w) + 1],
                                  costs_uniform, sizes, budget)
        a, s, *_ = measure(plan, test, costs_uniform)
        bon = correct[(RULES.index("best_of_n"), w)][test].mean()
        uniform.append({"width": w, "option": names[int(plan.option[0])], "plan_width": int(plan.width[0]),
                        "accuracy": a, "kflops": s, "bon_accuracy": float(bon), "bon_kflops": float(unit["best_of_n"] * w)})
    low, high = int(costs_adaptive.min() * k), int(costs_adaptive.max() * cfg.pool_samples)
    curve = []
    for per_query in np.unique(np.geomspace(low, high, cfg.num_budgets).astype(np.int64)):
        try:
            plan = plan_allocation(acc_adaptive, adaptive_widths, costs_adaptive, sizes, int(per_query) * q_test)
        except ValueError:
            continue
        a, s, width, option, ok = measure(plan, test, costs_adaptive)
        curve.append({"budget": int(per_query), "accuracy": a, "kflops": s, "plan_width": plan.width.tolist(),
                      "plan_option": [names[int(o)] for o in plan.option], "expected": plan.expected_accuracy})
    for u in uniform:
        reach = [c["kflops"] for c in curve if c["accuracy"] >= u["accuracy"]]
        u["adaptive_kflops"] = min(reach) if reach else None
        u["saving"] = u["kflops"] / min(reach) if reach else None
        bon_reach = [v["bon_kflops"] for v in uniform if v["bon_accuracy"] >= u["accuracy"]]
        u["bon_kflops_to_match"] = min(bon_reach) if bon_reach else None
    return {"difficulty": difficulty, "tiers": tiers, "edges": np.asarray(edges), "test": test, "unit": unit,
            "uniform": uniform, "curve": curve, "acc_adaptive": acc_adaptive, "adaptive_widths": adaptive_widths,
            "sizes": sizes}


def adaptive_rows(a: dict) -> tuple[list[dict], float | None]:
    rows, best = [], None
    for u in a["uniform"]:
        s = u["saving"]
        best = s if s is not None and (best is None or s > best) else best
        verdict = ("no adaptive budget reaches this accuracy" if s is None else
                   f"holds ({s:.2f}x less)" if s >= 2 else f"fails ({s:.2f}x, target 2x)")
        rows.append({"uniform width": u["width"], "uniform rule": u["option"], "uniform acc": u["accuracy"],
                     "uniform kFLOP/query": u["kflops"], "best-of-N acc (same width)": u["bon_accuracy"],
                     "best-of-N kFLOP to match": u["bon_kflops_to_match"],
                     "adaptive kFLOP to match": u["adaptive_kflops"], "saving": s, "verdict": verdict})
    return rows, best


def _generation_answer(generation):
    return arithmetic.extract_answer(generation.tokens)


def matched_plans(a: dict) -> tuple[dict, dict]:
    """The middle uniform budget and the cheapest adaptive plan that reached its accuracy on the test
    half (the nearest budget if none did)."""
    uniform = a["uniform"][len(a["uniform"]) // 2]
    reach = [c for c in a["curve"] if c["accuracy"] >= uniform["accuracy"]]
    adaptive_plan = (min(reach, key=lambda c: c["kflops"]) if reach else
                     min(a["curve"], key=lambda c: abs(c["kflops"] - uniform["kflops"])))
    return uniform, adaptive_plan


def execute_plans(models: Models, pool: dict, a: dict, cfg: StudyConfig) -> dict:
    """The adaptive plan and the uniform one it matched, each run on the test problems as ONE compiled
    program (``allocated_search`` with exact width buckets, learned-verifier scores, fresh samples):
    per-query widths, rules, answers' correctness, the NFE executed (the run's counters) and allocated
    (widths x the pool's NFE per sample, prefill included) and the program's wall clock."""
    lm = models.scaling.lm_small
    test, tiers = np.asarray(a["test"], bool), np.asarray(a["tiers"])
    problems = sm.heldout_problems(lm.config, cfg.per_digits)
    prompts, truth = problems.prompts[test], np.asarray(problems.a + problems.b)[test]
    base = _lm_rollout(lm.model, lm.config, cfg.temperature)
    reward = sm.GenerationScore(models.scaling.verifier.model)
    uniform, adaptive_plan = matched_plans(a)
    plans = {"adaptive": (np.asarray(adaptive_plan["plan_width"])[tiers[test]],
                          np.array([RULES.index(o) for o in adaptive_plan["plan_option"]])[tiers[test]]),
             "uniform": (np.full(int(test.sum()), uniform["plan_width"]),
                         np.full(int(test.sum()), RULES.index(uniform["option"])))}
    key = jax.random.fold_in(jax.random.key(cfg.seed), 0x9002)
    out = {}
    for name, (width, option) in plans.items():
        search = its.scaling.allocated_search(base, reward, max_width=int(width.max()), rules=RULES,
                                              answer_fn=_generation_answer, buckets=its.scaling.width_buckets(width))
        x = its.scaling.AllocatedQueries(prompts, jnp.asarray(width, jnp.int32), jnp.asarray(option, jnp.int32))
        result = its.run(search, key, x, num_steps=lm.config.completion_len)
        out[name] = {"width": width, "option": option, "correct": np.asarray(result.output.info["answer"]) == truth,
                     "nfe": float(result.stats.nfe), "nfe_allocated": float(np.sum(width)) * pool["nfe_per_sample"],
                     "seconds": time_fn(_run_output(search, key, x, lm.config.completion_len), repeats=cfg.cost_repeats)}
    return out


def telemetry(executed: dict, pool: dict, a: dict, cfg: StudyConfig, seconds_per_token: float) -> dict:
    """Per-tier NFE, FLOPs, modelled latency and executed accuracy of the adaptive plan (test problems)."""
    test, tiers = np.asarray(a["test"], bool), np.asarray(a["tiers"])
    run = executed["adaptive"]
    width, option = np.asarray(run["width"]), np.asarray(run["option"])
    lm = cfg.models.lm_small
    cost = query_cost(jnp.asarray(width), lm.completion_len)
    nfe = width * pool["nfe_per_sample"]
    flops = np.array([a["unit"][RULES[o]] * 1e3 for o in option]) * width
    latency = np.asarray(cost.depth, float) * seconds_per_token
    t = jnp.asarray(tiers[test])
    summary = {name: tier_summary(jnp.asarray(v, jnp.float32), t, cfg.num_tiers)
               for name, v in (("nfe", nfe), ("flops", flops), ("latency", latency),
                               ("accuracy", np.asarray(run["correct"], float)),
                               ("difficulty", np.asarray(a["difficulty"])[test]))}
    rows = []
    for d in range(cfg.num_tiers):
        s = {k: (v.count[d], v.mean[d], v.quantiles[d]) for k, v in summary.items()}
        member = tiers[test] == d
        rows.append({"tier": d, "queries": int(s["nfe"][0]), "difficulty (mean)": float(s["difficulty"][1]),
                     "rule": RULES[int(option[member][0])] if member.any() else "-",
                     "width": int(width[member][0]) if member.any() else 0,
                     "NFE p10/p50/p90": "/".join(f"{float(x):.0f}" for x in s["nfe"][2]),
                     "FLOPs mean": float(s["flops"][1]), "latency ms p50": 1e3 * float(s["latency"][2][1]),
                     "accuracy (executed)": float(s["accuracy"][1])})
    runs = [{"plan": name, "accuracy": float(np.mean(r["correct"])), "NFE executed": r["nfe"],
             "NFE allocated": r["nfe_allocated"], "wall clock ms": 1e3 * r["seconds"]}
            for name, r in executed.items()]
    return {"rows": rows, "runs": runs}


def depth_width(models: Models, cfg: StudyConfig) -> list[dict]:
    """Equal NFE per query spent as refinement steps (depth) or best-of-N candidates (width): wall clock,
    NFE and the digit-likeness of the output (small digits flow)."""
    flow = models.scaling.flow_small.model
    ode = its.refine.ode(flow, solver="euler", path=LINEAR)
    reward = digit_rewards.max_class_log_prob(models.classifier)
    x = _flow_queries(cfg, flow, cfg.depth_width_queries, 5)
    key = jax.random.key(cfg.seed + 7)
    rows = []
    for width in cfg.depth_width:
        steps = max(1, cfg.depth_width_nfe // width)
        sampler = its.search.best_of_n(ode, reward, num_candidates=width)
        r = its.run(sampler, key, x, num_steps=steps)
        seconds = time_fn(_run_output(sampler, key, x, steps), repeats=cfg.cost_repeats)
        likeness = np.asarray(reward(r.output.best))
        rows.append({"steps (depth)": steps, "candidates (width)": width,
                     "NFE/query": float(r.stats.nfe) / x.shape[0],
                     "sequential calls": int(query_cost(width, steps).depth),
                     "wall clock ms": 1e3 * seconds, "max_c log p(c|x)": float(likeness.mean())})
    return rows


DEPTH_WIDTH_COLUMNS = ["steps (depth)", "candidates (width)", "NFE/query", "sequential calls", "wall clock ms",
                       "max_c log p(c|x)"]


def _plot_adaptive(a: dict, routed: dict, out_dir: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    u = a["uniform"]
    ax.plot([v["kflops"] for v in u], [v["accuracy"] for v in u], "o-", label="uniform allocation")
    ax.plot([v["bon_kflops"] for v in u], [v["bon_accuracy"] for v in u], "s--", label="best-of-N (verifier)")
    for result, label in ((a, "adaptive (incl. probe)"), (routed, "adaptive, routing to the large LM")):
        c = sorted(result["curve"], key=lambda c: c["kflops"])
        ax.plot([v["kflops"] for v in c], [v["accuracy"] for v in c], "^-", label=label)
    r = routed["uniform"]
    ax.plot([v["kflops"] for v in r], [v["accuracy"] for v in r], "v:", label="uniform, large LM allowed")
    ax.set(xscale="log", xlabel="kFLOP per query", ylabel="test accuracy", title="compute allocation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir / f"{NAME}_adaptive.png")


# ------------------------------------------------------------------------------------------ study

def _fmt(v, spec=".3g"):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def study(out_dir: pathlib.Path, *, quick: bool, cfg: StudyConfig | None = None,
          models: Models | Callable[[], Models] | None = None) -> StudyResult:
    """All four sub-studies (see the module docstring). ``models``: the models (or a function returning
    them) to use instead of loading ``cfg.models`` (their configs must be ``cfg``'s: the sweep is keyed by
    ``cfg``); loaded only if a sweep entry is missing."""
    cfg = (config(quick) if cfg is None else cfg)
    out_dir = pathlib.Path(out_dir)
    get = functools.cache(lambda: models() if callable(models) else models if models is not None
                          else load_models(cfg))
    tasks = [("models", lambda: model_summary(get())),
             ("cost|refinement", lambda: cost_axis(get(), cfg, "refinement")),
             ("cost|tokens", lambda: cost_axis(get(), cfg, "tokens")),
             ("cost|particles", lambda: cost_axis(get(), cfg, "particles")),
             ("power|solver", lambda: solver_errors(cfg)),
             ("power|best_of_n", lambda: bon_scores(get(), cfg)),
             ("pool", lambda: sample_pool(get(), cfg)),
             ("matched|flops", lambda: lm_flops(get())),
             ("matched|large", lambda: large_greedy(get(), cfg)),
             ("matched|digits", lambda: matched_digits(get(), cfg)),
             ("adaptive|depth_width", lambda: depth_width(get(), cfg))]
    sweep = Sweep(out_dir / f"{NAME}_{cfg.digest()}.json", total=len(tasks) + 1)    # + the executed plans
    data = {key: sweep.get_or_compute(key, fn) for key, fn in tasks}
    plots = [_plot_models(data["models"], out_dir)]

    # 1. linear cost
    axes = [data[f"cost|{a}"] for a in ("refinement", "tokens", "particles")]
    cost_table, cost_fits = cost_rows(axes)
    plots.append(_plot_cost(axes, cost_fits, out_dir))
    rolled = [p["flops_rolled"] for p in data["cost|refinement"]["points"]]
    cost_holds = all(f["flops"]["r2"] >= R2_THRESHOLD for f in cost_fits.values())

    # 2. power law
    fits = power_fits(data["power|solver"], data["power|best_of_n"], data["pool"], cfg)
    law_table = power_rows(fits)
    cov_rows, cov_law = coverage_table(data["pool"], cfg)
    plots.append(_plot_power(fits, out_dir))
    power_holds = all(power_verdict(f)[0] for f in fits.values())

    # 3. matched
    lm = matched_lm(data["pool"], data["matched|large"], data["matched|flops"], cfg)
    match_table, match_summary = matched_rows(lm)
    digit_table, digits_holds, digits_verdict = digits_rows(data["matched|digits"])
    plots.append(_plot_matched(lm, match_summary, out_dir))
    lm_holds = match_summary["all"]["holds"]

    # 4. adaptive
    a = adaptive(data["pool"], lm, cfg)
    alloc_table, best_saving = adaptive_rows(a)
    seconds_per_token = cost_fits["tokens"]["seconds"]["slope"]
    executed = sweep.get_or_compute("adaptive|executed", lambda: execute_plans(get(), data["pool"], a, cfg))
    tele = telemetry(executed, data["pool"], a, cfg, max(seconds_per_token, 0.0))
    routed = adaptive(data["pool"], lm, cfg, route=True)
    route_table, route_saving = adaptive_rows(routed)
    plots.append(_plot_adaptive(a, routed, out_dir))
    adaptive_holds = best_saving is not None and best_saving >= 2

    headline = [
        {"claim": "1. cost is linear in iterations (FLOPs R² >= 0.98 on refinement steps, tokens, particles)",
         "measured": ", ".join(f"{r['axis']} R² = {r['FLOPs R²']:.4f}" for r in cost_table)
         + "; wall clock R² " + ", ".join(f"{r['wall-clock R²']:.3f}" for r in cost_table),
         "holds": bool(cost_holds)},
        {"claim": "2. quality follows a power law in NFE (solver, search, sampling)",
         "measured": "; ".join(f"{name.split(':')[0]} b = {_fmt((f['law'] or {}).get('b'))} "
                               f"{_interval(f.get('ci', {}).get('b'))}" for name, f in fits.items()),
         "holds": bool(power_holds)},
        {"claim": f"3. a {lm['M_params']:.0f}x smaller model with search matches the larger one at equal FLOPs",
         "measured": f"LM: small {match_summary['best_rule']} N={match_summary['best_width']} "
                     f"{match_summary['all']['small']:.3f} vs large greedy {match_summary['all']['large']:.3f}; "
                     f"digits: {digits_verdict}",
         "holds": bool(lm_holds and digits_holds)},
        {"claim": "4. adaptive allocation reaches uniform allocation's accuracy with >= 2x less compute",
         "measured": ("no uniform budget matched" if best_saving is None else
                      f"best saving {best_saving:.2f}x over {len(a['uniform'])} uniform budgets "
                      f"(>= 2x at {sum(1 for u in a['uniform'] if (u['saving'] or 0) >= 2)})")
                     + "; routing between the small and large LM: " +
                     ("no uniform budget matched" if route_saving is None else f"best saving {route_saving:.2f}x"),
         "holds": bool(adaptive_holds)},
    ]
    m = lm["matched"]
    small_cfg, large_cfg = cfg.models.lm_small, cfg.models.lm_large
    markdown = "\n".join([
        "Headline (each claim measured below; `holds` is the verdict of its section):", "",
        markdown_table(headline), "",
        "### Models", "",
        "Trained here with optax and Flax NNX, deterministically, cached on disk and verified on load "
        "(`experiments/scaling_models.py`; the LMs' held-out metric is greedy accuracy, the flows' the held-out "
        "flow-matching loss, the verifier's accuracy and AUC); loss curves in the first figure:", "",
        markdown_table(model_rows(data["models"])), "",
        "### 1. Linear cost", "",
        "FLOPs: XLA's cost analysis of the unrolled program (init, n steps, finalize); wall clock: median of "
        f"{cfg.cost_repeats} runs of the compiled `its.run` after a warm-up. Refinement: Euler ODE of the small "
        f"digits flow; tokens: rollout of the small LM (temperature {cfg.temperature}); particles: best-of-N "
        f"over the flow's ODE ({cfg.cost_width_steps} steps) with the classifier reward. The rolled `its.run` "
        f"program's cost analysis counts the scan body once: {min(rolled):.4g}-{max(rolled):.4g} FLOPs for "
        f"{cfg.cost_steps[0]}-{cfg.cost_steps[-1]} refinement steps, so FLOPs must be read unrolled "
        "(or as NFE x FLOPs per NFE).", "",
        markdown_table(cost_table), "",
        "### 2. Power law", "",
        "q = a NFE^(-b), 95% bootstrap "
        f"intervals ({cfg.bootstrap} resamples of queries / samples). ODE: the convergence study's d = 2 mixture "
        f"(linear path, float64, {cfg.solver_batch} samples, Dopri8 reference); best-of-N: small digits flow, "
        f"Euler {cfg.flow_steps} steps, {cfg.bon_queries} queries, widths {list(cfg.bon_widths)}; sampling: the "
        f"small LM at temperature {cfg.temperature}, {cfg.pool_samples} samples for each of "
        f"{len(data['pool']['truth'])} held-out problems, quality -log pass@k (Brown et al.'s coverage law "
        "pass@k = exp(a k^b) is this power law; 1 - pass@k has a floor, the problems never solved, where an "
        f"offset fit is ill-posed). Verdict: log-space R² >= {LOG_R2_THRESHOLD} and b > 0 with 95% confidence.", "",
        markdown_table(law_table), "",
        "Coverage against k (unbiased pass@k; coverage law " +
        ("not fitted" if cov_law is None else f"exp({cov_law.a:.3f} k^{cov_law.b:.3f})") + "):", "",
        markdown_table(cov_rows), "",
        "### 3. Small vs large at matched FLOPs", "",
        f"Arithmetic LMs: small {lm['f_small']:.4g} FLOPs per sequence (XLA, {small_cfg.prompt_len + small_cfg.completion_len} "
        f"positions, no cache), large {lm['f_large']:.4g}: M = {lm['M_flops']:.2f} (parameters {lm['M_params']:.2f}x); "
        f"verifier {lm['f_verifier']:.4g} per sequence. Snell's K = M + 3(M - 1) D_pre / D_inf with D_pre = "
        f"{lm['D_pre']:.4g} training tokens, D_inf = {lm['D_inf']:.4g} tokens of this evaluation set: K = "
        f"{m['inference only']['K']:.2f} (inference only, D_pre / D_inf -> 0) or {m['with pretraining']['K']:.4g} "
        "(pretraining included). Samples at matched FLOPs (inference only): " +
        ", ".join(f"{r} N = {w}" for r, w in m["inference only"]["width"].items()) +
        (f"; with pretraining: " + ", ".join(f"{r} N = {w}" for r, w in m["with pretraining"]["width"].items())
         + f" (the pool holds {cfg.pool_samples} per problem: capped there)") + ". The small LM's strategy is "
        "the better of majority vote and best-of-N with the learned verifier at its matched N; the oracle "
        "(exact checker, pass@N) is an upper bound, not a realisable strategy. Crossover: the FLOPs, in units "
        "of the large model's greedy FLOPs, where the small LM's strategy first reaches the large model's "
        "accuracy.", "",
        markdown_table(match_table), "",
        f"Digits flows (Euler, {data['matched|digits']['steps']} steps, {cfg.digits_queries} queries): "
        f"FLOPs per NFE small {data['matched|digits']['f_small']:.4g}, large {data['matched|digits']['f_large']:.4g} "
        f"(M = {data['matched|digits']['M_flops']:.2f}), classifier {data['matched|digits']['f_classifier']:.4g} per "
        "call; best-of-N picks the output with the highest max_c log p(c|x) (an unconditional 'looks like a "
        "digit' reward); quality: feature distance to the nearest held-out digit (any class). Verdict: "
        f"{digits_verdict}.", "",
        markdown_table(digit_table), "",
        "### 4. Adaptive allocation", "",
        f"Small LM pool; difficulty = 1 - answer agreement of each problem's first {cfg.probe} samples (they "
        f"are its first candidates, so their cost is in every adaptive budget; agreement of {cfg.probe} samples "
        "takes few values, and equal difficulties share a tier, so tiers can be unequal or empty); "
        f"{cfg.num_tiers} quantile tiers "
        "and accuracy curves (tier x rule x width) calibrated on even problems, plans measured on odd ones. "
        f"Rules: {', '.join(RULES)} (learned verifier); cost per sample {a['unit']} kFLOP (sequence + "
        "verifier for best-of-N). For each uniform budget: the best single (rule, width) chosen on the "
        "calibration half; adaptive: `plan_allocation` over widths >= the probe; compute to match = the "
        "smallest measured budget reaching uniform's test accuracy.", "",
        markdown_table(alloc_table), "",
        "The model as a choice (cost-aware routing): the large LM decoding greedily is one more option, at "
        f"{routed['unit'][LARGE]} kFLOP per problem; uniform allocation may give it to every problem, the "
        "planner to a tier after the probe (the probe's samples are then spent on top of the large call). "
        "Same calibration, tiers and test half:", "",
        markdown_table(route_table), "",
        "Executed: the middle uniform budget and the cheapest adaptive plan that reached its accuracy, each "
        "run on the test problems as one compiled program (`its.scaling.allocated_search`, exact width "
        "buckets from `width_buckets`, so only the allocated candidates run; fresh samples, the learned "
        "verifier's scores); NFE from the run's counters, wall clock of the compiled program:", "",
        markdown_table(tele["runs"]), "",
        "Per-tier telemetry of the executed adaptive plan (latency = sequential model calls, width running "
        "in parallel, x measured seconds per token):", "",
        markdown_table(tele["rows"]), "",
        f"Depth against width at {cfg.depth_width_nfe} NFE per query (small digits flow, "
        f"{cfg.depth_width_queries} queries; width candidates run in parallel, steps in sequence):", "",
        markdown_table(data["adaptive|depth_width"], DEPTH_WIDTH_COLUMNS),
    ])
    figures = {"headline": headline, "models": model_rows(data["models"]), "linear_cost": {"axes": axes, "fits": cost_fits, "table": cost_table},
               "power_law": {"fits": fits,
                             "table": law_table, "coverage": cov_rows,
                             "coverage_law": None if cov_law is None else cov_law._asdict()},
               "matched": {"lm": {k: v for k, v in lm.items() if k not in ("curves", "large", "digits")},
                           "table": match_table, "summary": match_summary, "digits": data["matched|digits"],
                           "digits_table": digit_table},
               "routing": {"table": route_table, "best_saving": route_saving, "curve": routed["curve"]},
               "adaptive": {"table": alloc_table, "best_saving": best_saving, "curve": a["curve"],
                            "telemetry": tele, "depth_width": data["adaptive|depth_width"]}}
    return StudyResult("Scaling: cost, power laws, matched compute, adaptive allocation", markdown,
                       jsonable(figures), plots)


def main(argv: list[str] | None = None) -> None:
    study_main(study, NAME, __doc__, argv)


if __name__ == "__main__":
    main()
