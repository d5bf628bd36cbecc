"""Study: sample quality against refinement steps for every composition, against exact answers.

(a) Tokens. A bigram chain ``its.models.MarkovLM`` over V tokens, sequences of length L (V**L of them,
enumerated: the exact law p). Every masked-diffusion sampler runs on the chain's perfect denoiser
(``its.hybrid.markov_denoiser``, forward–backward), so what is left is each sampler's own error: the
factorised update of MDLM (Sahoo et al. 2024, arXiv 2406.07524) that unmasks several positions
independently in one step, ReMDM remasking (Wang et al. 2025, arXiv 2503.00307), MaskGIT (Chang et al.
2022, arXiv 2202.04200; random order, τ large, and confidence order, τ = 4.5), the first-hitting sampler
(Zheng et al. 2024, arXiv 2409.02908; exact with L steps) and autoregressive sampling
(``its.tokens.rollout`` on the same chain behind a BOS token; exact with L steps). Quality: the total
variation TV(p̂, p) = ½ Σ_x |p̂(x) − p(x)| of N samples to p, beside the floor of N exact samples
(``MarkovLM.sample``), and the gap of the mean exact log-likelihood of the samples to its exact
expectation E_p[log p] = −H(p), in standard errors.

(b) Continuous sequences. Diffusion forcing (Chen et al. 2024, arXiv 2407.01392) with the pyramid
schedule on the exact denoiser of a linear-Gaussian state-space model
(``its.models.LinearGaussianSSM.denoiser``) from full-sequence (u = 0) to autoregressive (u = S), at
S levels: NFE = S + ⌊(M − 1)u⌋ per row; errors of the sample mean and covariance against the exact
moments, and the log-likelihood gap mean log p(x) − E[log p(x)] (in standard errors).

(c) The arithmetic task (``itscale.verifiers.arithmetic``, multi-digit addition with worked solutions):
a ``MaskedTransformer`` trained here with the conditional MDLM loss (prompt given) generates the worked
solution of held-out problems by MDLM, ReMDM and MaskGIT at K refinement steps, beside a causal
transformer of the same size trained on the same problems (AR); quality is the exact checker's accuracy.

Every point is a :class:`experiments.common.Sweep` entry, stored when computed; a rerun recomputes only
the missing points.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import itscale as its
from experiments import model_cache, sequence_models
from experiments.common import StudyResult, Sweep, markdown_table, save_figure
from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.hybrid.first_hitting import first_hitting
from itscale.hybrid.masked_diffusion import mdlm, remdm
from itscale.hybrid.maskgit import maskgit
from itscale.hybrid.sequence_diffusion import diffusion_forcing, pyramid_steps
from itscale.models.state_space import LinearGaussianSSM
from itscale.verifiers import arithmetic

NAME = "sequences"


class StudyConfig(NamedTuple):
    """Sizes of the study (static). Tokens: ``vocab``, ``length``, ``samples`` per point, ``steps`` of the
    refinement samplers (MaskGIT only up to ``length``); state space: ``ssm_length`` tokens of dimension
    2, ``ssm_samples`` per point, ``levels`` S and ``uncertainties`` u/S of the pyramid; ``samplers``: names of
    :data:`TOKEN_SAMPLERS` to run (None: all)."""

    vocab: int = 3
    length: int = 6
    samples: int = 20000
    steps: tuple = (1, 2, 3, 6, 12, 24, 48)
    remdm_eta: float = 0.1
    ssm_length: int = 6
    ssm_samples: int = 8000
    levels: tuple = (2, 4, 8, 16, 32, 64)
    uncertainties: tuple = (0.0, 0.25, 0.5, 1.0)
    seed: int = 0
    samplers: tuple | None = None
    denoiser_width: int = 64                 # the trained MaskedTransformer (sampler "mdlm_trained")
    denoiser_steps: int = 3000
    denoiser_data: int = 20000
    forcing_denoisers: tuple = ("exact", "trained")   # diffusion forcing on the exact and a trained denoiser
    ssm_denoiser_width: int = 128
    ssm_denoiser_steps: int = 4000
    arith_digits: int = 2                    # (c) the arithmetic task; arith_samplers=(): section skipped
    arith_steps: tuple = (1, 2, 4, 8, 16, 23)
    arith_samplers: tuple = ("mdlm", "remdm", "maskgit", "ar")
    arith_width: int = 64
    arith_train_steps: int = 2000
    arith_data: int = 20000
    arith_problems: int = 2000

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._asdict(), sort_keys=True).encode()).hexdigest()[:12]


def config(quick: bool) -> StudyConfig:
    """Quick: L = 4 (81 sequences), a few thousand samples, three step counts; full: L = 6 (729)."""
    if not quick:
        return StudyConfig()
    return StudyConfig(length=4, samples=3000, steps=(1, 2, 4), ssm_length=3, ssm_samples=2000,
                       levels=(2, 8), uncertainties=(0.0, 1.0), denoiser_steps=1500, ssm_denoiser_steps=2000,
                       arith_steps=(1, 4, 23), arith_train_steps=1500, arith_problems=500)


# ----------------------------------------------------------------------------------------------
# (a) tokens on an exact Markov chain

def chain(vocab: int) -> its.models.MarkovLM:
    """A fixed, clearly non-uniform bigram chain (the transition favours staying, then the next token)."""
    stay = np.eye(vocab) * 2.0 + np.roll(np.eye(vocab), 1, axis=1) * 1.0
    ramp = np.linspace(0.0, 0.8, vocab)
    return its.models.MarkovLM(jnp.asarray(ramp), jnp.asarray(stay + ramp[None, :]))


def with_bos(model: its.models.MarkovLM) -> its.models.MarkovLM:
    """The chain over V + 1 tokens with a BOS token V whose next-token law is the initial law; BOS is
    never drawn, so a rollout from the prompt [BOS] samples the chain exactly."""
    v = model.vocab_size
    table = jnp.full((v + 1, v + 1), -jnp.inf).at[:v, :v].set(model.log_transition)
    table = table.at[v, :v].set(model.initial_log_probs())
    return its.models.MarkovLM(jnp.zeros(v + 1).at[v].set(-jnp.inf), table)


class Chain(NamedTuple):
    model: its.models.MarkovLM
    law: np.ndarray          # (V**L,) exact probabilities, lexicographic order
    entropy: float           # H(p) = −E_p[log p]


def exact_chain(cfg: StudyConfig) -> Chain:
    model = chain(cfg.vocab)
    log_law = np.asarray(model.completion_log_probs(jnp.zeros((0,), jnp.int32), cfg.length), np.float64)
    law = np.exp(log_law)
    return Chain(model, law, float(-np.sum(law * log_law)))


def token_quality(tokens, exact: Chain, cfg: StudyConfig) -> dict:
    """TV to the exact law, fraction left masked, and the log-likelihood gap −H(p) in standard errors."""
    tokens = np.asarray(tokens)
    done = np.all((tokens >= 0) & (tokens < cfg.vocab), axis=1)
    index = np.ravel_multi_index(tokens[done].T, (cfg.vocab,) * cfg.length)
    counts = np.bincount(index, minlength=cfg.vocab ** cfg.length)
    tv = 0.5 * float(np.abs(counts / len(tokens) - exact.law).sum() + (1 - done.mean()))
    log_p = np.log(exact.law[index])
    se = log_p.std() / math.sqrt(max(len(log_p), 1))
    gap = float(log_p.mean() + exact.entropy) if len(log_p) else float("nan")
    return {"tv": tv, "masked_fraction": float(1 - done.mean()), "loglik_gap": gap,
            "loglik_gap_se": gap / se if se > 0 else 0.0}


TOKEN_SAMPLERS = {
    "mdlm": "MDLM",
    "mdlm_trained": "MDLM, trained transformer denoiser",
    "remdm": "MDLM + ReMDM (cap)",
    "maskgit_random": "MaskGIT, random order (τ = 1e6)",
    "maskgit_confidence": "MaskGIT, confidence (τ = 4.5)",
    "first_hitting": "first-hitting",
    "ar": "AR (rollout)",
}


def selected(cfg: StudyConfig) -> list[str]:
    names = list(TOKEN_SAMPLERS) if cfg.samplers is None else list(cfg.samplers)
    unknown = sorted(set(names) - set(TOKEN_SAMPLERS))
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; accepted: {sorted(TOKEN_SAMPLERS)}")
    return names


def token_steps(cfg: StudyConfig, name: str) -> tuple:
    """Step counts of a sampler: first-hitting and AR need exactly L (one token per step); MaskGIT
    decides at least one token per step, so at most L."""
    if name in ("first_hitting", "ar"):
        return (cfg.length,)
    if name.startswith("maskgit"):
        return tuple(k for k in cfg.steps if k <= cfg.length)
    return cfg.steps


def token_point(cfg: StudyConfig, exact: Chain, name: str, steps: int, trained=None) -> dict:
    """One (sampler, steps) run of ``cfg.samples`` rows; quality and NFE per sample. ``trained()``: the
    trained denoiser (sampler ``mdlm_trained``)."""
    mask = cfg.vocab
    key = jax.random.fold_in(jax.random.key(cfg.seed), steps)
    n, length = cfg.samples, cfg.length
    if name == "ar":
        prompts = jnp.full((n, 1), cfg.vocab, jnp.int32)
        result = its.run(its.tokens.rollout(with_bos(exact.model).logits_fn), key, prompts, num_steps=steps)
        tokens = result.output.tokens[:, 1:]
    else:
        denoiser = markov_denoiser(exact.model, mask_id=mask)
        sampler, params = {
            "mdlm": lambda: (mdlm(denoiser, mask_id=mask), None),
            "mdlm_trained": lambda: (mdlm(trained(), mask_id=mask), None),
            "remdm": lambda: (remdm(denoiser, mask_id=mask, remasking="cap", eta=cfg.remdm_eta), None),
            "maskgit_random": lambda: (maskgit(denoiser, mask_id=mask), {"temperature": 1e6}),
            "maskgit_confidence": lambda: (maskgit(denoiser, mask_id=mask), {"temperature": 4.5}),
            "first_hitting": lambda: (first_hitting(denoiser, mask_id=mask), None),
        }[name]()
        result = its.run(sampler, key, jnp.full((n, length), mask, jnp.int32), num_steps=steps, params=params)
        tokens = result.output.tokens
    return {"sampler": name, "steps": steps, "nfe_per_sample": int(result.stats.nfe) / n,
            **token_quality(tokens, exact, cfg)}


def token_floor(cfg: StudyConfig, exact: Chain) -> dict:
    """The same quality measures on ``cfg.samples`` exact ancestral samples (the sampling-noise floor)."""
    tokens = exact.model.sample(jax.random.key(cfg.seed + 1), cfg.samples, cfg.length)
    return token_quality(tokens, exact, cfg)


# ----------------------------------------------------------------------------------------------
# (c) the arithmetic task, graded by its exact checker

ARITH_SAMPLERS = {"mdlm": "MDLM", "remdm": "MDLM + ReMDM (cap)", "maskgit": "MaskGIT (confidence)",
                  "ar": "AR (rollout, causal transformer)"}


def arith_steps(cfg: StudyConfig, name: str) -> tuple:
    """Step counts of a sampler on the worked solutions (MaskGIT decides at least one token per step, so at
    most the completion's length; AR decodes one token per step)."""
    length = arithmetic.completion_length(cfg.arith_digits)
    if name == "ar":
        return (length,)
    return tuple(k for k in cfg.arith_steps if name != "maskgit" or k <= length)


def arith_denoiser_record(cached) -> dict:
    return {"losses": cached.record["epoch_losses"], "seconds": cached.record["seconds"],
            "params": model_cache.num_params(cached.model)}


def arith_point(cfg: StudyConfig, name: str, steps: int, trained, trained_lm=None) -> dict:
    """Accuracy (exact checker) of ``cfg.arith_problems`` held-out problems solved by ``name`` at ``steps``;
    ``trained()``: the masked denoiser, ``trained_lm()``: the causal LM (sampler ``"ar"``)."""
    mask, digits = arithmetic.VOCAB_SIZE, cfg.arith_digits
    problems = arithmetic.sample_problems(jax.random.key(cfg.seed + 8), cfg.arith_problems, digits)
    if name == "ar":
        lm = trained_lm()
        sampler = its.tokens.rollout(lm, init_cache=lm.init_cache, max_len=lm.max_len, eos_id=arithmetic.EOS,
                                     pad_id=arithmetic.PAD, max_new_tokens=steps)
        x = problems.prompts
    else:
        x = jnp.concatenate([problems.prompts, jnp.full(problems.completions.shape, mask, jnp.int32)], axis=1)
        sampler = {"mdlm": lambda: mdlm(trained(), mask_id=mask),
                   "remdm": lambda: remdm(trained(), mask_id=mask, remasking="cap", eta=cfg.remdm_eta),
                   "maskgit": lambda: maskgit(trained(), mask_id=mask)}[name]()
    result = its.run(sampler, jax.random.fold_in(jax.random.key(cfg.seed + 9), steps), x, num_steps=steps)
    completions = result.output.tokens[:, problems.prompts.shape[1]:]
    correct = np.asarray(arithmetic.is_correct(problems.prompts, completions))
    accuracy = float(correct.mean())
    return {"sampler": name, "steps": steps, "nfe_per_sample": int(result.stats.nfe) / cfg.arith_problems,
            "accuracy": accuracy, "se": math.sqrt(accuracy * (1 - accuracy) / cfg.arith_problems)}


# ----------------------------------------------------------------------------------------------
# (b) diffusion forcing on the linear-Gaussian state-space model

SSM = dict(transition=[[0.9, 0.2], [-0.1, 0.8]], noise_cov=[[0.3, 0.05], [0.05, 0.2]],
           initial_mean=[1.0, -0.5], initial_cov=[[0.5, 0.1], [0.1, 0.4]])


def state_space() -> LinearGaussianSSM:
    return LinearGaussianSSM(*(jnp.asarray(SSM[k], jnp.float64) for k in
                               ("transition", "noise_cov", "initial_mean", "initial_cov")))


def forcing_point(cfg: StudyConfig, levels: int, fraction: float, denoiser: str = "exact", trained=None) -> dict:
    """Diffusion forcing at S = ``levels``, u = ``fraction``·S on the exact denoiser (``denoiser="exact"``)
    or the trained one (``"trained"``, ``trained()`` returns it): moment errors and the log-likelihood gap
    of ``cfg.ssm_samples`` sequences."""
    with jax.enable_x64(True):
        ssm, path, m = state_space(), its.paths.linear(), cfg.ssm_length
        u = fraction * levels
        steps = pyramid_steps(levels, u, m)
        model = ssm.denoiser(path) if denoiser == "exact" else trained()
        sampler = diffusion_forcing(model, path, levels=levels, uncertainty=u)
        key = jax.random.fold_in(jax.random.key(cfg.seed), levels)
        noise = jax.random.normal(jax.random.fold_in(key, 1), (cfg.ssm_samples, m, ssm.dim), jnp.float64)
        result = its.run(sampler, key, noise, num_steps=steps)
        x = np.asarray(result.output)
        mean, cov = np.asarray(ssm.mean(m)).reshape(-1), np.asarray(ssm.covariance(m))
        log_p = np.asarray(ssm.log_prob(result.output))
        expected = float(ssm.expected_log_prob(m))
    flat = x.reshape(len(x), -1)
    n = len(x)
    mean_z = float(np.max(np.abs(flat.mean(0) - mean) / np.sqrt(np.diag(cov) / n)))
    cov_err = float(np.linalg.norm(np.cov(flat.T) - cov) / np.linalg.norm(cov))
    gap = float(log_p.mean() - expected)
    return {"denoiser": denoiser, "levels": levels, "u_over_S": fraction, "u": u, "steps": steps,
            "nfe_per_sample": int(result.stats.nfe) / n, "mean_error_se": mean_z, "cov_rel_error": cov_err,
            "loglik_gap": gap, "loglik_gap_se": gap / (log_p.std() / math.sqrt(n))}


# ----------------------------------------------------------------------------------------------

def study(out_dir: pathlib.Path, *, quick: bool, cfg: StudyConfig | None = None) -> StudyResult:
    """Quality vs steps of the token samplers and of diffusion forcing; see the module docstring."""
    cfg = config(quick) if cfg is None else cfg
    names = selected(cfg)
    out_dir = pathlib.Path(out_dir)
    token_grid = [(name, k) for name in names for k in token_steps(cfg, name)]
    forcing_grid = [(d, f, s) for d in cfg.forcing_denoisers for f in cfg.uncertainties for s in cfg.levels]
    learned_ssm = "trained" in cfg.forcing_denoisers
    learned = "mdlm_trained" in names
    arith_grid = [(name, k) for name in cfg.arith_samplers for k in arith_steps(cfg, name)]
    sweep = Sweep(out_dir / f"{NAME}_{cfg.digest()}.json",
                  total=1 + learned + learned_ssm + len(token_grid) + len(forcing_grid) + len(arith_grid)
                  + bool(arith_grid))
    exact = exact_chain(cfg)
    cached = functools.cache(lambda: sequence_models.trained_denoiser(cfg, exact))   # trained / loaded if needed
    floor = sweep.get_or_compute("floor", lambda: token_floor(cfg, exact))
    denoiser = (sweep.get_or_compute("denoiser", lambda: sequence_models.denoiser_quality(cfg, exact, cached()))
                if learned else None)
    tokens = [sweep.get_or_compute(f"tokens|{name}|K={k}",
                                   lambda name=name, k=k: token_point(cfg, exact, name, k, lambda: cached().model))
              for name, k in token_grid]
    with jax.enable_x64(True):
        ssm, path = state_space(), its.paths.linear()
    ssm_cached = functools.cache(lambda: sequence_models.trained_ssm_denoiser(cfg, ssm, path))
    ssm_denoiser = (sweep.get_or_compute("ssm_denoiser",
                                         lambda: sequence_models.ssm_denoiser_error(cfg, ssm, path, ssm_cached()))
                    if learned_ssm else None)
    forcing = [sweep.get_or_compute(f"forcing|{d}|u/S={f}|S={s}",
                                    lambda d=d, s=s, f=f: forcing_point(cfg, s, f, d, lambda: ssm_cached().model))
               for d, f, s in forcing_grid]
    arith_cached = functools.cache(lambda: sequence_models.trained_arithmetic_denoiser(cfg))
    arith_lm = functools.cache(lambda: sequence_models.trained_arithmetic_lm(cfg))
    arith_denoiser = (sweep.get_or_compute("arith_denoiser", lambda: arith_denoiser_record(arith_cached()))
                      if arith_grid else None)
    arith = [sweep.get_or_compute(f"arith|{name}|K={k}",
                                  lambda name=name, k=k: arith_point(cfg, name, k, lambda: arith_cached().model,
                                                                     lambda: arith_lm().model))
             for name, k in arith_grid]
    plots = [_plot_tokens(tokens, floor, out_dir), _plot_forcing(forcing, out_dir)]
    if arith:
        plots.append(_plot_arith(arith, cfg, out_dir))
    figures = {"tokens": tokens, "floor": floor, "forcing": forcing, "entropy": exact.entropy, "denoiser": denoiser,
               "ssm_denoiser": ssm_denoiser, "arith": arith, "arith_denoiser": arith_denoiser}
    markdown = _markdown(cfg, exact, floor, tokens, forcing, denoiser, ssm_denoiser)
    if arith:
        markdown += "\n\n" + _arith_markdown(cfg, arith, arith_denoiser)
    return StudyResult("Both axes: masked diffusion, AR and diffusion forcing against exact laws", markdown,
                       figures, plots)


def _markdown(cfg, exact, floor, tokens, forcing, denoiser, ssm_denoiser) -> str:
    steps = sorted({p["steps"] for p in tokens})
    rows = []
    for name in selected(cfg):
        row = {"sampler": TOKEN_SAMPLERS[name]}
        for p in tokens:
            if p["sampler"] == name:
                row[f"K={p['steps']}"] = f"{p['tv']:.3f}"
        rows.append(row)
    rows.append({"sampler": f"exact samples (floor, N = {cfg.samples})", **{f"K={k}": f"{floor['tv']:.3f}"
                                                                            for k in steps}})
    tv_table = markdown_table(rows, ["sampler"] + [f"K={k}" for k in steps])
    ll_table = markdown_table([{"sampler": TOKEN_SAMPLERS[p["sampler"]], "K": p["steps"],
                                "NFE/sample": p["nfe_per_sample"], "TV": p["tv"],
                                "mean log p + H": p["loglik_gap"], "gap / SE": p["loglik_gap_se"],
                                "left masked": p["masked_fraction"]} for p in tokens])
    df_table = markdown_table([{"denoiser": p["denoiser"], "u/S": p["u_over_S"], "S": p["levels"],
                                "NFE/sample": p["nfe_per_sample"],
                                "max abs mean err / SE": p["mean_error_se"],
                                "‖cov err‖/‖Σ‖": p["cov_rel_error"],
                                "log-lik gap": p["loglik_gap"], "gap / SE": p["loglik_gap_se"]}
                               for p in forcing])
    return "\n".join([
        f"(a) Bigram chain, V = {cfg.vocab}, L = {cfg.length} ({cfg.vocab ** cfg.length} sequences, "
        f"entropy H = {exact.entropy:.4f} nats), exact denoiser (forward–backward); {cfg.samples} samples "
        f"per point. Total variation to the exact law against refinement steps K (NFE per sample = K; AR: "
        f"L + 1 with the BOS prefill). ReMDM: cap schedule, η = {cfg.remdm_eta}." + (
            "" if denoiser is None else
            f" Trained denoiser: `its.models.MaskedTransformer` (bidirectional, time-free, width "
            f"{cfg.denoiser_width}, depth 2, {denoiser['params']} parameters) trained here with MDLM's loss "
            f"(`masked_denoising_loss`) for {cfg.denoiser_steps} AdamW steps on {cfg.denoiser_data} chain samples "
            f"in {denoiser['seconds']:.0f} s (loss {denoiser['losses'][0]:.3f} → {denoiser['losses'][-1]:.3f}); "
            f"its conditionals are {denoiser['kl']:.2g} nats (mean KL per masked position) from the exact ones."),
        "", tv_table, "",
        "Mean exact log-likelihood of the samples minus its exact expectation −H (0 for an exact sampler; "
        "in standard errors in the next column):", "", ll_table, "",
        f"(b) Diffusion forcing (pyramid) on the exact denoiser of a linear-Gaussian state-space model, "
        f"d = 2, M = {cfg.ssm_length} tokens, {cfg.ssm_samples} samples per point, DDPM steps (η = 1); "
        "u/S = 0 is full-sequence diffusion, u/S = 1 autoregressive." + (
            "" if ssm_denoiser is None else
            f" Trained denoiser: an MLP on the flattened sequence and per-token time features "
            f"({ssm_denoiser['params']} parameters) trained here as diffusion forcing trains (independent "
            f"per-token noise levels, x̂₀ MSE) for {cfg.ssm_denoiser_steps} AdamW steps on fresh sequences in "
            f"{ssm_denoiser['seconds']:.0f} s (loss {ssm_denoiser['losses'][0]:.3f} → {ssm_denoiser['losses'][-1]:.3f}); "
            f"its squared error to the exact posterior mean is {ssm_denoiser['relative_error']:.2g} of the "
            "irreducible error E‖x − E[x | z]‖²."),
        "", df_table])


def _arith_markdown(cfg, arith, trained) -> str:
    steps = sorted({p["steps"] for p in arith})
    rows = [{"sampler": ARITH_SAMPLERS[name], **{f"K={p['steps']}": f"{p['accuracy']:.3f} ± {p['se']:.3f}"
                                                 for p in arith if p["sampler"] == name}}
            for name in cfg.arith_samplers]
    digits = cfg.arith_digits
    return "\n".join([
        f"(c) Arithmetic (addition of 1 to {digits} digits with worked solutions, "
        f"{arithmetic.completion_length(digits)} completion tokens): `its.models.MaskedTransformer` (width "
        f"{cfg.arith_width}, depth 2, {trained['params']} parameters) trained here with the conditional MDLM loss "
        f"(prompt never masked) for {cfg.arith_train_steps} AdamW steps on {cfg.arith_data} problems in "
        f"{trained['seconds']:.0f} s (loss {trained['losses'][0]:.3f} → {trained['losses'][-1]:.3f}); accuracy "
        f"(exact checker, ± standard error) on {cfg.arith_problems} held-out problems against refinement steps K "
        "(NFE per problem = K); AR: a causal transformer of the same width and depth trained with the "
        "next-token loss on the same problems, sampling one token per step (K = the completion length, plus "
        "the prompt's prefill), all at temperature 1:", "",
        markdown_table(rows, ["sampler"] + [f"K={k}" for k in steps])])


def _plot_arith(arith, cfg, out_dir) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in cfg.arith_samplers:
        mine = sorted((p for p in arith if p["sampler"] == name), key=lambda p: p["steps"])
        ax.errorbar([p["steps"] for p in mine], [p["accuracy"] for p in mine], [p["se"] for p in mine],
                    fmt="o-", capsize=2, label=ARITH_SAMPLERS[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("refinement steps K (NFE per problem)")
    ax.set_ylabel("accuracy (exact checker)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Trained masked diffusion and AR on the arithmetic task")
    return save_figure(fig, out_dir / f"{NAME}_arithmetic.png")


def _plot_tokens(tokens, floor, out_dir) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(p["sampler"] for p in tokens):
        label = TOKEN_SAMPLERS[name]
        mine = sorted((p for p in tokens if p["sampler"] == name), key=lambda p: p["steps"])
        ax.plot([p["steps"] for p in mine], [p["tv"] for p in mine], "o-" if len(mine) > 1 else "s", label=label)
    ax.axhline(floor["tv"], ls=":", color="k", lw=1, label="exact samples (noise floor)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("refinement steps K (NFE per sample)")
    ax.set_ylabel("TV to the exact law")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Masked diffusion vs AR on an exact Markov chain")
    return save_figure(fig, out_dir / f"{NAME}_tokens.png")


def _plot_forcing(forcing, out_dir) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for f in dict.fromkeys(p["u_over_S"] for p in forcing):
        mine = sorted((p for p in forcing if p["u_over_S"] == f), key=lambda p: p["levels"])
        ax.plot([p["nfe_per_sample"] for p in mine], [abs(p["loglik_gap"]) for p in mine], "o-", label=f"u/S = {f:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE per sample (S + ⌊(M − 1)u⌋)")
    ax.set_ylabel("|mean log p − E log p|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Diffusion forcing: full-sequence → autoregressive")
    return save_figure(fig, out_dir / f"{NAME}_forcing.png")
