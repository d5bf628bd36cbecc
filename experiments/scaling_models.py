"""Trained models of two sizes per family for the scaling studies, cached by :mod:`experiments.model_cache`.

Families (the default configs are at least 10x apart in parameter count, same training recipe):

* **arithmetic LMs**: decoder-only transformers (:mod:`experiments.arithmetic_model`) on worked 1-4 digit
  addition (:mod:`itscale.verifiers.arithmetic_task`); evaluated by greedy decoding
  (``its.tokens.rollout(model, temperature=0)``) on held-out problems drawn per number of digits, with the
  accuracy per difficulty bucket (:func:`difficulty`: digits of the longer operand, number of carries);
* **digits flows**: flow-matching velocity MLPs on the 8x8 digits (:mod:`itscale.models.digits`), small
  and large width (cached with the digits models, :func:`experiments.digits_models.load_or_train_flow`);
* **a learned outcome verifier** for the LM task: :class:`OutcomeVerifier`, a small causal transformer
  reading (prompt, completion) and giving the logit of P(correct), trained by binary cross-entropy on
  samples of the small LM (temperature ``VerifierConfig.temperature``) labelled by the exact checker
  :func:`itscale.verifiers.arithmetic.is_correct` (which stays the exact verifier beside it).

Every training run is a pure function of its config (seeds included): same config, same weights.
``python -m experiments.scaling_models [--out DIR]`` trains (or loads) all of them and writes the loss
curves (``scaling_models_losses.png``) and a summary (``scaling_models.json``) into ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import itscale as its
from experiments import arithmetic_model, digits_models, model_cache
from experiments.arithmetic_model import ModelConfig
from experiments.common import save_figure, write_json_atomic
from itscale.models import digits
from itscale.models.training import train
from itscale.models.transformer import Transformer
from itscale.verifiers import arithmetic

SUBFOLDER = "scaling"
LM_STEPS_PER_EPOCH = 25          # an LM "epoch": 25 steps of fresh problems (the data stream is endless)
_EVAL_SEED = 0x5CA1E            # held-out problems and samples: keys disjoint from the training keys


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """The outcome verifier: data (samples of ``lm`` at ``temperature``), architecture and optimisation."""

    lm: ModelConfig
    temperature: float = 1.0
    num_train: int = 8192
    num_heldout: int = 2048
    width: int = 32
    depth: int = 2
    num_heads: int = 2
    train_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def _lm(width: int, depth: int, num_heads: int) -> ModelConfig:
    return ModelConfig(max_digits=4, min_digits=1, width=width, depth=depth, num_heads=num_heads,
                       train_steps=600, batch_size=64, learning_rate=3e-3, warmup_steps=50)


class ScalingConfig(NamedTuple):
    """Both sizes of each family, the verifier, and ``eval_per_digits`` held-out problems per digit count."""

    lm_small: ModelConfig = _lm(width=28, depth=2, num_heads=2)
    lm_large: ModelConfig = _lm(width=80, depth=4, num_heads=4)
    flow_small: digits.FlowConfig = digits.FlowConfig(width=64)
    flow_large: digits.FlowConfig = digits.FlowConfig(width=512)
    verifier: VerifierConfig = VerifierConfig(lm=_lm(width=28, depth=2, num_heads=2))
    eval_per_digits: int = 512


class Trained(NamedTuple):
    """A trained model and its record: ``epoch_losses`` (mean training loss per epoch; an LM epoch is
    :data:`LM_STEPS_PER_EPOCH` steps), ``metrics``, training ``seconds``, cache ``path`` and ``source``
    ("cache" or why it was trained)."""

    model: nnx.Module
    config: Any
    num_params: int
    epoch_losses: np.ndarray
    metrics: dict
    seconds: float
    path: pathlib.Path
    source: str


class ScalingModels(NamedTuple):
    lm_small: Trained
    lm_large: Trained
    flow_small: Trained
    flow_large: Trained
    verifier: Trained


# ------------------------------------------------------------------------------ difficulty
class Difficulty(NamedTuple):
    """Difficulty of ``a + b``: ``digits`` of the longer operand (= worked steps) and ``carries`` (steps
    whose carry out is 1), int arrays of the operands' shape."""

    digits: np.ndarray
    carries: np.ndarray


def difficulty(a, b) -> Difficulty:
    """Digits n = max(digits(a), digits(b)) and carries #{i < n : (a mod 10^(i+1)) + (b mod 10^(i+1))
    >= 10^(i+1)} of non-negative integers a, b (arrays; exact integer arithmetic in int64)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if np.any(a < 0) or np.any(b < 0):
        raise ValueError("a and b must be non-negative")
    place = 10 ** np.arange(1, 19, dtype=np.int64)                    # 10^1 .. 10^18
    digits_of = lambda x: 1 + np.sum(x[..., None] >= place, axis=-1)  # noqa: E731
    carries = np.sum(a[..., None] % place + b[..., None] % place >= place, axis=-1)
    return Difficulty(np.maximum(digits_of(a), digits_of(b)), carries)


def bucket_accuracy(correct, level: Difficulty) -> dict:
    """Accuracy of ``correct`` (bool) overall, per digits, per carries and per (digits, carries) bucket."""
    correct = np.asarray(correct, bool)

    def mean_by(keys):
        return {str(k): float(correct[keys == k].mean()) for k in np.unique(keys)}

    pairs = sorted(set(zip(level.digits.tolist(), level.carries.tolist())))
    buckets = [{"digits": d, "carries": c, "count": int(np.sum(m)), "accuracy": float(correct[m].mean())}
               for d, c in pairs for m in [(level.digits == d) & (level.carries == c)]]
    return {"accuracy": float(correct.mean()), "by_digits": mean_by(level.digits),
            "by_carries": mean_by(level.carries), "buckets": buckets}


# ------------------------------------------------------------------------------ arithmetic LMs
@functools.partial(jax.jit, static_argnums=(0, 1))
def heldout_problems(config: ModelConfig, per_digits: int) -> arithmetic.Problems:
    """``per_digits`` problems for each n in [min_digits, max_digits] (a, b ~ U{0..10^n - 1}), prompts
    padded to ``config.prompt_len``; drawn from keys disjoint from the training keys."""
    key = jax.random.key(_EVAL_SEED)
    batches = [arithmetic.sample_problems(jax.random.fold_in(key, n), per_digits, n, min_digits=n)
               for n in range(config.min_digits, config.max_digits + 1)]
    a, b = (jnp.concatenate([getattr(p, f) for p in batches]) for f in ("a", "b"))
    return arithmetic.Problems(arithmetic.format_prompt(a, b, config.max_digits),
                               arithmetic.worked_solution(a, b, config.max_digits), a, b)


def sample_completions(model: Transformer, config: ModelConfig, prompts, *, temperature: float,
                       key=None) -> jax.Array:
    """Full sequences (prompt, completion) of ``model`` on ``prompts``: (Q, P + C); greedy at temperature 0
    (``its.tokens.rollout``, the model's weights traced)."""
    sampler = its.tokens.rollout(model, temperature=temperature, eos_id=arithmetic.EOS, pad_id=arithmetic.PAD,
                                 max_new_tokens=config.completion_len, max_len=model.max_len)
    key = jax.random.key(_EVAL_SEED) if key is None else key
    return its.run(sampler, key, prompts, num_steps=config.completion_len).output.tokens


def lm_metrics(model: Transformer, config: ModelConfig, per_digits: int) -> dict:
    """Greedy-decoding accuracy on :func:`heldout_problems`, per difficulty bucket."""
    problems = heldout_problems(config, per_digits)
    tokens = sample_completions(model, config, problems.prompts, temperature=0.0)
    correct = arithmetic.is_correct(problems.prompts, tokens)
    return bucket_accuracy(correct, difficulty(problems.a, problems.b))


def fit_lm(config: ModelConfig, per_digits: int) -> tuple[Transformer, dict]:
    """Train the LM of ``config`` (:mod:`experiments.arithmetic_model`) and evaluate it (:func:`lm_metrics`):
    ``(model, record)``; ``seconds`` is the training time alone."""
    start = time.perf_counter()
    model, losses = train(arithmetic_model.completion_loss, arithmetic_model.build(config),
                          arithmetic_model.problems(config), arithmetic_model.optimizer(config),
                          config.train_steps, key=jax.random.key(config.seed))
    seconds = time.perf_counter() - start
    return model, {"step_losses": losses, "epoch_losses": digits.epoch_means(losses, LM_STEPS_PER_EPOCH),
                   "metrics": lm_metrics(model, config, per_digits), "seconds": seconds}


# ------------------------------------------------------------------------------ outcome verifier
class OutcomeVerifier(nnx.Module):
    """logit P(correct | x) = w^T f(x)_L + c: f a causal :class:`Transformer` over the full sequence x
    (prompt, completion, PAD after EOS), read at its last position L by a linear layer."""

    def __init__(self, *, width: int, depth: int, num_heads: int, max_len: int, rngs: nnx.Rngs):
        self.trunk = Transformer(arithmetic.VOCAB_SIZE, width=width, depth=depth, num_heads=num_heads,
                                 max_len=max_len, rngs=rngs)
        self.readout = nnx.Linear(arithmetic.VOCAB_SIZE, 1, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits (batch,) of ``tokens`` (batch, L) int."""
        return self.readout(self.trunk(tokens)[:, -1])[:, 0]


class GenerationScore(nnx.Module):
    """The verifier's logit of a rollout's output (an ``its.tokens.Generation``): the reward of a token
    search, with the verifier's weights traced."""

    def __init__(self, verifier: OutcomeVerifier):
        self.verifier = verifier

    def __call__(self, generation) -> jax.Array:
        return self.verifier(generation.tokens)


def verifier_model(config: VerifierConfig) -> OutcomeVerifier:
    """The untrained verifier of ``config`` (initialised from ``config.seed``)."""
    return OutcomeVerifier(width=config.width, depth=config.depth, num_heads=config.num_heads,
                           max_len=config.lm.prompt_len + config.lm.completion_len,
                           rngs=nnx.Rngs(config.seed))


def verifier_data(lm: Transformer, config: VerifierConfig, part: int, size: int
                  ) -> tuple[jax.Array, jax.Array]:
    """``size`` samples of ``lm`` (full sequences) and their exact labels (float 0/1); ``part`` 0: training,
    1: held out (disjoint keys)."""
    key = jax.random.fold_in(jax.random.key(_EVAL_SEED + 1 + config.seed), part)
    key_problems, key_samples = jax.random.split(key)
    prompts = _prompts(key_problems, size, config.lm.max_digits, config.lm.min_digits)
    tokens = sample_completions(lm, config.lm, prompts, temperature=config.temperature, key=key_samples)
    return tokens, arithmetic.outcome_reward(prompts, tokens)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _prompts(key, size: int, max_digits: int, min_digits: int) -> jax.Array:
    return arithmetic.sample_problems(key, size, max_digits, min_digits=min_digits).prompts


def verifier_loss(model: OutcomeVerifier, batch, key) -> jax.Array:
    """Mean binary cross-entropy -[y log s(f) + (1 - y) log(1 - s(f))] of the logits f."""
    tokens, labels = batch
    return jnp.mean(optax.sigmoid_binary_cross_entropy(model(tokens), labels))


def verifier_metrics(model: OutcomeVerifier, tokens, labels) -> dict:
    """Held-out accuracy (logit > 0 against the exact label), ROC AUC, base rate of correct samples."""
    from sklearn.metrics import roc_auc_score

    logits, labels = np.asarray(nnx.jit(OutcomeVerifier.__call__)(model, tokens)), np.asarray(labels) > 0.5
    auc = float(roc_auc_score(labels, logits)) if 0 < labels.mean() < 1 else float("nan")
    rate = float(labels.mean())
    return {"accuracy": float(np.mean((logits > 0) == labels)), "auc": auc, "base_rate": rate,
            "majority_accuracy": max(rate, 1 - rate)}


def fit_verifier(config: VerifierConfig, lm: Transformer) -> tuple[OutcomeVerifier, dict]:
    """Sample and label the data with ``lm`` (the model of ``config.lm``), train and evaluate the
    verifier; ``seconds`` is the training time alone."""
    train_set = verifier_data(lm, config, 0, config.num_train)
    heldout = verifier_data(lm, config, 1, config.num_heldout)
    warmup = min(50, config.train_steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, config.train_steps,
                                                  0.05 * config.learning_rate)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=config.weight_decay))
    start = time.perf_counter()
    model, losses = train(verifier_loss, verifier_model(config), train_set, optimizer, config.train_steps,
                          batch_size=config.batch_size, key=jax.random.key(config.seed))
    seconds = time.perf_counter() - start
    steps = digits.steps_per_epoch(config.num_train, config.batch_size)
    return model, {"step_losses": losses, "epoch_losses": digits.epoch_means(losses, steps),
                   "metrics": {**verifier_metrics(model, *heldout),
                               "train_base_rate": float(np.mean(np.asarray(train_set[1])))},
                   "seconds": seconds}


# ------------------------------------------------------------------------------ all of them
def _builders(config: ScalingConfig) -> dict:
    return {"lm_small": (arithmetic_model.build, config.lm_small),
            "lm_large": (arithmetic_model.build, config.lm_large),
            "flow_small": (digits.flow_model, config.flow_small),
            "flow_large": (digits.flow_model, config.flow_large),
            "verifier": (verifier_model, config.verifier)}


def param_counts(config: ScalingConfig = ScalingConfig()) -> dict[str, int]:
    """Parameters of every model of ``config``, counted on shapes only (nothing initialised or trained)."""
    return {name: model_cache.num_params(model_cache.abstract(build, cfg))
            for name, (build, cfg) in _builders(config).items()}


def _trained(cached: model_cache.Cached, config) -> Trained:
    r = cached.record
    return Trained(cached.model, config, model_cache.num_params(cached.model), np.asarray(r["epoch_losses"]),
                   r["metrics"], float(r["seconds"]), cached.path, cached.source)


def load_or_train_all(config: ScalingConfig = ScalingConfig(), *,
                      directory: str | os.PathLike | None = None) -> ScalingModels:
    """Every model of ``config``: verified from the cache (``directory``, else ``$ITSCALE_CACHE``, else
    ``~/.cache/itscale``), else trained, evaluated and cached."""
    if config.verifier.lm != config.lm_small:
        raise ValueError("config.verifier.lm must be config.lm_small (the verifier reads its samples)")
    folder = model_cache.cache_dir(directory) / SUBFOLDER
    fields = frozenset({"epoch_losses", "metrics", "seconds"})

    def lm(cfg):
        run = {"model": cfg, "eval_per_digits": config.eval_per_digits}       # the cached record holds both
        return _trained(model_cache.load_or_train("lm", run, lambda run: arithmetic_model.build(run["model"]),
                                                  lambda: fit_lm(cfg, config.eval_per_digits),
                                                  directory=folder, fields=fields), cfg)

    def flow(cfg):
        model, record = digits_models.load_or_train_flow(cfg, directory=directory)
        return Trained(model, cfg, model_cache.num_params(model), record.epoch_losses,
                       {**record.metrics, "final_loss": float(record.epoch_losses[-1])}, record.seconds,
                       record.path, record.source)

    lm_small, lm_large = lm(config.lm_small), lm(config.lm_large)
    verifier = model_cache.load_or_train("verifier", config.verifier, verifier_model,
                                         lambda: fit_verifier(config.verifier, lm_small.model),
                                         directory=folder, fields=fields)
    return ScalingModels(lm_small, lm_large, flow(config.flow_small), flow(config.flow_large),
                         _trained(verifier, config.verifier))


# ------------------------------------------------------------------------------ report
def summary(models: ScalingModels) -> dict:
    """JSON figures: per model, parameters, training seconds, final epoch loss, metrics, cache source."""
    return {name: {"num_params": t.num_params, "seconds": t.seconds, "final_loss": float(t.epoch_losses[-1]),
                   "metrics": t.metrics, "source": t.source, "path": str(t.path)}
            for name, t in models._asdict().items()}


def plot_losses(models: ScalingModels, path: pathlib.Path) -> str:
    """Training loss per epoch of every model (one panel per family, log scale), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
    panels = ((f"arithmetic LM (epoch = {LM_STEPS_PER_EPOCH} steps)", ("lm_small", "lm_large")),
              ("digits flow matching", ("flow_small", "flow_large")),
              ("outcome verifier (BCE)", ("verifier",)))
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            t = getattr(models, name)
            ax.plot(np.arange(1, len(t.epoch_losses) + 1), t.epoch_losses,
                    label=f"{name} ({t.num_params:,} params)")
        ax.set(title=title, xlabel="epoch", ylabel="training loss", yscale="log")
        ax.legend()
    return save_figure(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/scaling_models", help="folder of the plot and summary")
    parser.add_argument("--cache", default=None,
                        help="cache folder (default $ITSCALE_CACHE, else ~/.cache/itscale)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    models = load_or_train_all(directory=args.cache)
    figures = summary(models)
    write_json_atomic(out / "scaling_models.json", figures)
    print(f"loss curves: {out / plot_losses(models, out / 'scaling_models_losses.png')}")
    for name, f in figures.items():
        m = {k: v for k, v in f["metrics"].items() if k != "buckets"}
        print(f"{name}: {f['num_params']:,} params; {f['seconds']:.1f} s ({f['source']}); "
              f"final loss {f['final_loss']:.4f}; {m}")


if __name__ == "__main__":
    main()
