"""Study: accuracy against the total token budget for LM search on worked multi-digit addition.

A small transformer is trained on 2-3 digit additions with worked per-digit steps
(:mod:`experiments.arithmetic_model`, cached); then, on held-out problems, every strategy is run
through ``its.run`` at several widths and its accuracy is plotted against the NFE per problem it
actually spent (``stats.nfe`` / problems: token positions through the network, counted by the
framework):

* plain sampling: pass@1, the unbiased estimate c/K from K samples per problem;
* best-of-N with the exact outcome verifier (``its.search.best_of_n``; = coverage of its N samples);
* best-of-N with a noisy verifier (exact reward + sigma * z, z fixed per sequence,
  ``itscale.verifiers.arithmetic.noisy_verifier``): all correct samples share one sequence and one z,
  every distinct wrong sequence draws its own, so a wide search finds a lucky wrong answer --
  verifier over-optimization (Gao et al. 2022, arXiv 2210.10760);
* majority vote (self-consistency, Wang et al. 2023) over the exact-verifier run's N samples, and the
  reward-weighted vote over the noisy run's samples (weights = noisy score clipped at 0);
* the step-level searches of ``itscale.tokens`` that are available -- beam search, DVTS, REBASE
  (``SearchOutput.best``) and particle filtering (the highest-weight particle) -- with the exact process
  verifier ``process_reward`` (1 while every completed step matches the exact working), one search
  step per reasoning step (separator ``;``).

Coverage pass@k against k (unbiased estimator, Chen et al. 2021) from the K samples, with the fitted
coverage law C(k) = exp(a k^b) (Brown et al. 2024, arXiv 2407.21787).

Every (strategy, width) point is a :class:`experiments.common.Sweep` entry, stored when computed; a
rerun recomputes only the missing points (and loads the model only if it has to).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from experiments import arithmetic_model
from experiments.arithmetic_model import ModelConfig
from experiments.common import StudyResult, Sweep, markdown_table, save_figure
from itscale.models.transformer import logits_fn
from itscale.verifiers import arithmetic

NAME = "tokens"


class StudyConfig(NamedTuple):
    """Sizes of the study (static). ``widths``: N of best-of-N and the votes (N = 1 is plain sampling,
    the ``plain`` point); ``search_widths``: rows
    of the step-level searches (multiples of 4: beam expansions and DVTS subtree width);
    ``strategies``: names of :data:`STRATEGIES` to run (None: all that are available)."""

    model: ModelConfig = ModelConfig()
    num_problems: int = 64
    widths: tuple = (4, 16)
    search_widths: tuple = (4, 16)
    coverage_samples: int = 32
    noise: float = 0.75
    temperature: float = 1.0
    group: int = 4
    seed: int = 1
    strategies: tuple | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._asdict(), sort_keys=True).encode()).hexdigest()[:12]


def config(quick: bool) -> StudyConfig:
    """Quick: 2-3 digits, ~1 minute of training on 2 cores (plain sampling ~50% correct), two widths;
    full: 2-4 digits, a larger model trained a few minutes to a similar accuracy, more widths."""
    if quick:
        return StudyConfig()
    return StudyConfig(model=ModelConfig(max_digits=4, min_digits=2, width=96, depth=3, train_steps=350,
                                         learning_rate=2e-3),
                       num_problems=128, widths=(2, 4, 8, 16, 32), search_widths=(4, 8, 16, 32),
                       coverage_samples=64)


# ----------------------------------------------------------------------------------------------
# Runs. A Setup holds the trained model and the held-out problems; each run is one its.run.

@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """The trained model and the held-out problems (hashed by identity: runs are cached per Setup)."""

    config: StudyConfig
    model: Any
    prompts: jax.Array       # (Q, P) held-out prompts
    answers: np.ndarray      # (Q,) a + b
    losses: list


def make_setup(out_dir: pathlib.Path, cfg: StudyConfig) -> Setup:
    trained = arithmetic_model.train_or_load(out_dir, cfg.model)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 0x7E57)       # disjoint from the training keys
    problems = arithmetic.sample_problems(key, cfg.num_problems, cfg.model.max_digits,
                                          min_digits=cfg.model.min_digits)
    return Setup(cfg, trained.model, problems.prompts, np.asarray(problems.a + problems.b), trained.losses)


def _rollout_options(setup: Setup) -> dict:
    model = setup.model
    return dict(eos_id=arithmetic.EOS, pad_id=arithmetic.PAD, init_cache=model.init_cache, max_len=model.max_len,
                temperature=setup.config.temperature)


def _rollout(setup: Setup) -> its.Sampler:
    return its.tokens.rollout(logits_fn(setup.model), max_new_tokens=setup.config.model.completion_len,
                              **_rollout_options(setup))


def outcome_reward(generation) -> jax.Array:
    """The exact outcome verifier on a Generation: 1.0 iff its answer equals a + b."""
    return arithmetic.outcome_reward(generation.tokens, generation.tokens)


def noisy_reward(setup: Setup) -> Callable:
    noisy = arithmetic.noisy_verifier(lambda t: arithmetic.outcome_reward(t, t), setup.config.seed,
                                      setup.config.noise)
    return lambda generation: noisy(generation.tokens)


def process_reward(setup: Setup) -> Callable:
    max_digits = setup.config.model.max_digits
    return lambda generation: arithmetic.process_reward(generation.tokens, max_digits)


def _key(setup: Setup) -> jax.Array:
    return jax.random.key(setup.config.seed)


def _answers(tokens) -> np.ndarray:
    return np.asarray(arithmetic.extract_answer(jnp.reshape(tokens, (-1, tokens.shape[-1])))
                      ).reshape(tokens.shape[:-1])


def _spent(result, setup: Setup) -> dict:
    q = setup.prompts.shape[0]
    return {"nfe": int(result.stats.nfe), "nfe_per_problem": int(result.stats.nfe) / q,
            "verifier_calls_per_problem": int(result.stats.verifier_calls) / q}


@functools.cache
def _best_of_n(setup: Setup, verifier: str, n: int) -> dict:
    """One best-of-N run; shared by the strategies that read its candidates (same NFE)."""
    reward = outcome_reward if verifier == "exact" else noisy_reward(setup)
    sampler = its.search.best_of_n(_rollout(setup), reward, num_candidates=n)
    result = its.run(sampler, _key(setup), setup.prompts, num_steps=setup.config.model.completion_len)
    out = result.output
    per_candidate = setup.config.model.prompt_len + setup.config.model.completion_len
    return {**_spent(result, setup), "declared_nfe_per_problem": n * per_candidate,
            "best": _answers(out.best.tokens), "candidates": _answers(out.candidates.tokens),
            "scores": np.asarray(out.scores)}


@functools.cache
def _samples(setup: Setup) -> dict:
    """K independent samples per problem (plain sampling and coverage)."""
    k = setup.config.coverage_samples
    prompts = jnp.repeat(setup.prompts, k, axis=0)
    result = its.run(_rollout(setup), _key(setup), prompts, num_steps=setup.config.model.completion_len)
    correct = _answers(result.output.tokens).reshape(-1, k) == setup.answers[:, None]
    spent = _spent(result, setup)
    return {**spent, "nfe_per_sample": spent["nfe"] / prompts.shape[0],
            "correct_counts": correct.sum(axis=1).astype(int)}


def _search(setup: Setup, name: str, width: int):
    """Build and run one of the other team's step-level searches at ``width`` rows per problem."""
    m = setup.config.model
    budget = m.prompt_len + width * m.num_steps * arithmetic.STEP_LENGTH
    common = dict(nfe_budget=budget, num_steps=m.num_steps, step_length=arithmetic.STEP_LENGTH,
                  separator_id=arithmetic.SEP, **_rollout_options(setup))
    fn = logits_fn(setup.model)
    prm = process_reward(setup)
    group = setup.config.group
    sampler = {"beam_search": lambda: its.tokens.beam_search(fn, prm, expansions=group, **common),
               "dvts": lambda: its.tokens.dvts(fn, prm, subtree_width=group, **common),
               "rebase": lambda: its.tokens.rebase(fn, prm, **common),
               "particle_filter": lambda: its.tokens.particle_filter(fn, prm, **common)}[name]()
    result = its.run(sampler, _key(setup), setup.prompts, num_steps=m.num_steps)
    out = result.output
    if name == "particle_filter":
        tokens = out.particles.tokens                                     # (Q, N, L)
        best = jnp.take_along_axis(tokens, jnp.argmax(out.log_weights, axis=1)[:, None, None], axis=1)[:, 0]
    else:
        best = out.best.tokens
    split = out.split
    return {**_spent(result, setup), "declared_nfe_per_problem": int(split.nfe_bound),
            "nfe_budget_per_problem": int(split.nfe_budget), "search_width": int(split.width),
            "best": _answers(best)}


class Strategy(NamedTuple):
    label: str
    widths: str                         # "widths" or "search_widths" of the StudyConfig, or "one"
    compute: Callable[[Setup, int], dict]
    available: Callable[[], bool] = lambda: True


def _accuracy(answers, setup: Setup) -> float:
    return float(np.mean(np.asarray(answers) == setup.answers))


def _plain(setup, n):
    s = _samples(setup)
    k = setup.config.coverage_samples
    return {"nfe_per_problem": s["nfe_per_sample"], "declared_nfe_per_problem":
            setup.config.model.prompt_len + setup.config.model.completion_len,
            "verifier_calls_per_problem": 0.0, "accuracy": float(np.mean(s["correct_counts"] / k))}


def _point(run: dict, answers, setup: Setup, **extra) -> dict:
    keep = ("nfe", "nfe_per_problem", "declared_nfe_per_problem", "verifier_calls_per_problem")
    return {**{k: run[k] for k in keep if k in run}, "accuracy": _accuracy(answers, setup), **extra}


def _bon(verifier):
    def compute(setup, n):
        run = _best_of_n(setup, verifier, n)
        covered = float(np.mean(np.any(run["candidates"] == setup.answers[:, None], axis=1)))
        return _point(run, run["best"], setup, coverage_of_candidates=covered)
    return compute


def _majority(setup, n):
    run = _best_of_n(setup, "exact", n)
    vote = its.search.majority_vote(jnp.asarray(run["candidates"]))
    return _point(run, vote.answer, setup, verifier_calls_per_problem=0.0)


def _weighted(setup, n):
    run = _best_of_n(setup, "noisy", n)
    vote = its.search.weighted_vote(jnp.asarray(run["candidates"]), jnp.maximum(jnp.asarray(run["scores"]), 0))
    return _point(run, vote.answer, setup)


def _tree(name):
    def compute(setup, width):
        run = _search(setup, name, width)
        return _point(run, run["best"], setup, nfe_budget_per_problem=run["nfe_budget_per_problem"],
                      search_width=run["search_width"])
    return compute


STRATEGIES = {
    "plain": Strategy("plain sampling (pass@1)", "one", _plain),
    "bon_exact": Strategy("best-of-N, exact verifier", "widths", _bon("exact")),
    "bon_noisy": Strategy("best-of-N, noisy verifier", "widths", _bon("noisy")),
    "majority": Strategy("majority vote", "widths", _majority),
    "weighted": Strategy("weighted vote, noisy verifier", "widths", _weighted),
    **{name: Strategy(f"{label}, process verifier", "search_widths", _tree(name),
                      functools.partial(hasattr, its.tokens, name))
       for name, label in (("beam_search", "beam search"), ("dvts", "DVTS"), ("rebase", "REBASE"),
                           ("particle_filter", "particle filter"))},
}


def compute_point(setup: Setup, strategy: str, width: int) -> dict:
    """One (strategy, width) point: accuracy and the NFE per problem the run spent."""
    return {"strategy": strategy, "width": width, **STRATEGIES[strategy].compute(setup, width)}


def compute_coverage(setup: Setup) -> dict:
    s = _samples(setup)
    return {"num_samples": setup.config.coverage_samples, "correct_counts": s["correct_counts"],
            "nfe_per_sample": s["nfe_per_sample"]}


def compute_training(setup: Setup) -> dict:
    return {"losses": setup.losses, "config": setup.config.model._asdict()}


# ----------------------------------------------------------------------------------------------

def selected(cfg: StudyConfig) -> list[str]:
    names = list(STRATEGIES) if cfg.strategies is None else list(cfg.strategies)
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; accepted: {sorted(STRATEGIES)}")
    return [n for n in names if STRATEGIES[n].available()]


def widths_of(cfg: StudyConfig, strategy: str) -> tuple:
    kind = STRATEGIES[strategy].widths
    return (1,) if kind == "one" else getattr(cfg, kind)


def coverage_curve(counts, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    ks = np.unique(np.round(np.geomspace(1, num_samples, 12)).astype(int))
    counts = np.asarray(counts, np.int64)
    return ks, np.array([float(np.mean(its.search.pass_at_k(num_samples, counts, int(k)))) for k in ks])


def study(out_dir: pathlib.Path, *, quick: bool, cfg: StudyConfig | None = None) -> StudyResult:
    """Accuracy vs NFE per problem of every strategy, and coverage vs k; see the module docstring."""
    cfg = config(quick) if cfg is None else cfg
    out_dir = pathlib.Path(out_dir)
    grid = [(name, w) for name in selected(cfg) for w in widths_of(cfg, name)]
    sweep = Sweep(out_dir / f"{NAME}_{cfg.digest()}.json", total=len(grid) + 2)   # + training, coverage
    setup = functools.cache(lambda: make_setup(out_dir, cfg))    # only if a point is missing

    training = sweep.get_or_compute("training", lambda: compute_training(setup()))
    points = [sweep.get_or_compute(f"{name}|width={w}", lambda name=name, w=w: compute_point(setup(), name, w))
              for name, w in grid]
    coverage = sweep.get_or_compute(f"coverage|samples={cfg.coverage_samples}",
                                    lambda: compute_coverage(setup()))

    ks, pass_k = coverage_curve(coverage["correct_counts"], coverage["num_samples"])
    try:
        law = its.search.fit_coverage_law(ks, pass_k)
    except ValueError:
        law = None
    plots = [_plot_accuracy(points, out_dir), _plot_coverage(ks, pass_k, law, out_dir)]
    markdown = _markdown(cfg, training, points, ks, pass_k, law)
    figures = {"points": points, "coverage": {"k": ks.tolist(), "pass_at_k": pass_k.tolist(),
                                              "law": None if law is None else law._asdict()},
               "training_final_loss": training["losses"][-1]}
    return StudyResult("Sequence axis: LM search on worked addition", markdown, figures, plots)


def _markdown(cfg, training, points, ks, pass_k, law) -> str:
    m = cfg.model
    columns = sorted({p["width"] for p in points})
    rows = []
    for name in dict.fromkeys(p["strategy"] for p in points):
        row = {"strategy": STRATEGIES[name].label}
        for p in points:
            if p["strategy"] == name:
                row[f"N={p['width']}"] = f"{p['accuracy']:.2f} @ {p['nfe_per_problem']:.0f}"
        rows.append(row)
    table = markdown_table(rows, ["strategy"] + [f"N={w}" for w in columns])
    cov = markdown_table([{"k": int(k), "pass@k": float(c), "fit exp(a k^b)": None if law is None else
                           float(law(k))} for k, c in zip(ks, pass_k)])
    fit = "no fit (fewer than two points with 0 < pass@k < 1)" if law is None else \
        f"a = {law.a:.3f}, b = {law.b:.3f}"
    return "\n".join([
        f"Transformer (width {m.width}, depth {m.depth}) trained {m.train_steps} steps on {m.min_digits}-"
        f"{m.max_digits} digit additions with worked steps (final loss {training['losses'][-1]:.3f}); "
        f"{cfg.num_problems} held-out problems, temperature {cfg.temperature}; noisy verifier sigma = "
        f"{cfg.noise}. N = candidates (best-of-N, votes) or search rows (tree search, particle filter). "
        "Cell: accuracy @ NFE per problem (token positions through the network, `stats.nfe`, "
        "counted by the run loop).", "", table, "",
        f"Coverage pass@k (unbiased, {cfg.coverage_samples} samples per problem); coverage law {fit}:", "",
        cov])


def _plot_accuracy(points, out_dir) -> str:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(p["strategy"] for p in points):
        if STRATEGIES[name].widths == "one":
            (p,) = (p for p in points if p["strategy"] == name)
            line = ax.axhline(p["accuracy"], ls=":", color="k", lw=1)
            ax.plot([p["nfe_per_problem"]], [p["accuracy"]], "o", color=line.get_color(),
                    label=STRATEGIES[name].label)
            continue
        mine = sorted((p for p in points if p["strategy"] == name), key=lambda p: p["nfe_per_problem"])
        ax.plot([p["nfe_per_problem"] for p in mine], [p["accuracy"] for p in mine], "o-",
                label=STRATEGIES[name].label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("NFE per problem (token positions, stats.nfe)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Accuracy vs token budget")
    return save_figure(fig, out_dir / f"{NAME}_accuracy.png")


def _plot_coverage(ks, pass_k, law, out_dir) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, pass_k, "o", label="pass@k (unbiased)")
    if law is not None:
        grid = np.geomspace(1, ks[-1], 100)
        ax.plot(grid, law(grid), "-", label=f"exp({law.a:.2f} k^{law.b:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("k samples")
    ax.set_ylabel("coverage")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_dir / f"{NAME}_coverage.png")
