"""The models the sequences study trains here, each cached on disk (``experiments.model_cache``, verified on
load) and measured against the exact denoiser of its task.

* A masked-diffusion denoiser for the bigram chain: ``its.models.MaskedTransformer`` trained with MDLM's
  loss; its conditionals against forward-backward's.
* A masked-diffusion denoiser for the arithmetic task (``itscale.verifiers.arithmetic``): the same
  ``MaskedTransformer`` trained with the conditional loss (the prompt never masked) on problems and their
  worked solutions; its samples are graded by the task's exact checker.
* Its autoregressive counterpart: a causal ``its.models.Transformer`` of the same size trained with the
  next-token loss on the same problems.
* A continuous sequence denoiser for the linear-Gaussian state-space model, trained as diffusion forcing
  trains (independent per-token noise levels, x₀-prediction MSE, whose minimiser is E[x | z] with per-token
  times: the exact denoiser of :meth:`LinearGaussianSSM.denoiser`); its error against that posterior mean.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import itscale as its
from experiments import model_cache
from itscale.hybrid.exact_conditionals import markov_denoiser
from itscale.verifiers import arithmetic


# ------------------------------------------------------------------------------ masked tokens

def denoiser_spec(cfg: StudyConfig) -> dict:
    return {"vocab": cfg.vocab, "length": cfg.length, "width": cfg.denoiser_width, "depth": 2, "num_heads": 4,
            "steps": cfg.denoiser_steps, "data": cfg.denoiser_data, "batch_size": 256, "peak_lr": 3e-3,
            "seed": cfg.seed}


def _build_denoiser(spec: dict) -> its.models.MaskedTransformer:
    return its.models.MaskedTransformer(spec["vocab"], spec["length"], width=spec["width"], depth=spec["depth"],
                                        num_heads=spec["num_heads"], rngs=nnx.Rngs(spec["seed"]))


def trained_denoiser(cfg: StudyConfig, exact: Chain) -> model_cache.Cached:
    """The MaskedTransformer trained with MDLM's loss on ``denoiser_data`` samples of the chain (AdamW,
    warm-up and cosine decay), cached on disk (verified on load)."""
    spec = denoiser_spec(cfg)

    def fit():
        model = _build_denoiser(spec)
        data = exact.model.sample(jax.random.key(cfg.seed + 2), spec["data"], cfg.length)
        schedule = optax.warmup_cosine_decay_schedule(0.0, spec["peak_lr"], 100, spec["steps"])
        model, losses = its.models.train(its.models.masked_denoising_loss, model, data, optax.adamw(schedule),
                                         spec["steps"], batch_size=spec["batch_size"], key=jax.random.key(cfg.seed + 3))
        return model, {"epoch_losses": [float(v) for v in losses.reshape(-1, 50).mean(axis=1)]}

    return model_cache.load_or_train("masked_denoiser", spec, _build_denoiser, fit)


def denoiser_quality(cfg: StudyConfig, exact: Chain, cached: model_cache.Cached) -> dict:
    """Mean KL(exact ‖ trained) of the conditionals at masked positions (half the positions masked, on fresh
    chain samples), the training record and the parameter count."""
    tokens = exact.model.sample(jax.random.key(cfg.seed + 4), 4000, cfg.length)
    masked = jax.random.uniform(jax.random.key(cfg.seed + 5), tokens.shape) < 0.5
    z = jnp.where(masked, cfg.vocab, tokens)
    log_exact = jax.nn.log_softmax(markov_denoiser(exact.model, mask_id=cfg.vocab)(z, None), axis=-1)
    log_model = jax.nn.log_softmax(cached.model(z), axis=-1)
    kl = jnp.sum(jnp.exp(log_exact) * (log_exact - log_model), axis=-1)
    return {"kl": float(jnp.sum(jnp.where(masked, kl, 0.0)) / jnp.sum(masked)),
            "losses": cached.record["epoch_losses"], "seconds": cached.record["seconds"],
            "params": model_cache.num_params(cached.model)}


def arithmetic_spec(cfg: StudyConfig) -> dict:
    digits = cfg.arith_digits
    return {"max_digits": digits, "length": arithmetic.prompt_length(digits) + arithmetic.completion_length(digits),
            "width": cfg.arith_width, "depth": 2, "num_heads": 4, "steps": cfg.arith_train_steps,
            "data": cfg.arith_data, "batch_size": 64, "peak_lr": 3e-3, "seed": cfg.seed}


def _build_arithmetic_denoiser(spec: dict) -> its.models.MaskedTransformer:
    return its.models.MaskedTransformer(arithmetic.VOCAB_SIZE, spec["length"], width=spec["width"],
                                        depth=spec["depth"], num_heads=spec["num_heads"],
                                        rngs=nnx.Rngs(spec["seed"]))


def _fit_on_problems(cfg: StudyConfig, spec: dict, model, loss_fn, data_of):
    """Train ``model`` on ``spec["data"]`` arithmetic problems (``data_of(problems)`` the batches' pytree) with
    the arithmetic models' shared recipe (AdamW, warm-up and cosine decay, the same problems and batch keys);
    returns ``(model, record)`` with the loss averaged over 30 chunks."""
    problems = arithmetic.sample_problems(jax.random.key(cfg.seed + 6), spec["data"], spec["max_digits"])
    schedule = optax.warmup_cosine_decay_schedule(0.0, spec["peak_lr"], min(100, spec["steps"] // 2), spec["steps"])
    model, losses = its.models.train(loss_fn, model, data_of(problems), optax.adamw(schedule), spec["steps"],
                                     batch_size=spec["batch_size"], key=jax.random.key(cfg.seed + 7))
    chunk = max(1, spec["steps"] // 30)
    return model, {"epoch_losses": [float(v) for v in losses[: len(losses) // chunk * chunk]
                                    .reshape(-1, chunk).mean(axis=1)]}


def trained_arithmetic_denoiser(cfg: StudyConfig) -> model_cache.Cached:
    """The MaskedTransformer trained with the conditional MDLM loss (prompt positions never masked) on
    ``arith_data`` problems with their worked solutions, cached on disk (verified on load)."""
    spec = arithmetic_spec(cfg)
    given = jnp.arange(spec["length"]) < arithmetic.prompt_length(spec["max_digits"])
    loss = functools.partial(its.models.masked_denoising_loss, given=given)
    return model_cache.load_or_train(
        "arithmetic_masked_denoiser", spec, _build_arithmetic_denoiser,
        lambda: _fit_on_problems(cfg, spec, _build_arithmetic_denoiser(spec), loss, lambda p: p.tokens))


def _build_arithmetic_lm(spec: dict) -> its.models.Transformer:
    return its.models.Transformer(arithmetic.VOCAB_SIZE, width=spec["width"], depth=spec["depth"],
                                  num_heads=spec["num_heads"], max_len=spec["length"], rngs=nnx.Rngs(spec["seed"]))


def trained_arithmetic_lm(cfg: StudyConfig) -> model_cache.Cached:
    """The autoregressive counterpart of :func:`trained_arithmetic_denoiser`: a causal ``Transformer`` of the
    same width and depth trained with the next-token loss on the worked solutions of the same problems
    (same optimiser, steps and batches), cached on disk (verified on load)."""
    spec = arithmetic_spec(cfg)
    return model_cache.load_or_train(
        "arithmetic_lm", spec, _build_arithmetic_lm,
        lambda: _fit_on_problems(cfg, spec, _build_arithmetic_lm(spec),
                                 lambda m, batch, key: its.models.next_token_loss(m, *batch),
                                 lambda p: (p.tokens, p.loss_mask)))


# ------------------------------------------------------------------------------ continuous sequences

class SequenceDenoiser(nnx.Module):
    """x̂₀ = D(z, t) for a sequence z (batch, M, d) with per-token times t ((M,) or (batch, M)): an MLP on
    the flattened sequence and sin/cos features of every token's time."""

    def __init__(self, length: int, dim: int, *, width: int = 128, depth: int = 3, time_features: int = 4,
                 rngs: nnx.Rngs):
        self.length, self.dim, self.time_features = length, dim, time_features
        sizes = [length * (dim + 2 * time_features)] + [width] * depth + [length * dim]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, z: jax.Array, t: jax.Array) -> jax.Array:
        batch = z.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, z.dtype), (batch, self.length))
        angles = t[..., None] * (jnp.pi * 2.0 ** jnp.arange(self.time_features, dtype=z.dtype))
        h = jnp.concatenate([z.reshape(batch, -1), jnp.sin(angles).reshape(batch, -1),
                             jnp.cos(angles).reshape(batch, -1)], axis=-1)
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return z + self.layers[-1](h).reshape(z.shape)       # a residual on z: the identity where t = 0


def ssm_denoiser_spec(cfg) -> dict:
    return {"length": cfg.ssm_length, "width": cfg.ssm_denoiser_width, "depth": 3,
            "steps": cfg.ssm_denoiser_steps, "batch_size": 512, "peak_lr": 2e-3, "seed": cfg.seed}


def _build_ssm_denoiser(spec: dict, dim: int = 2) -> SequenceDenoiser:
    return SequenceDenoiser(spec["length"], dim, width=spec["width"], depth=spec["depth"], rngs=nnx.Rngs(spec["seed"]))


def _forcing_loss(path):
    def loss(model, x, key):
        key_t, key_noise = jax.random.split(key)
        t = jax.random.uniform(key_t, x.shape[:2])                          # independent per-token levels
        z = path.alpha(t)[..., None] * x + path.sigma(t)[..., None] * jax.random.normal(key_noise, x.shape)
        return jnp.mean((model(z, t) - x) ** 2)
    return loss


def _float32(ssm):
    """The state-space model in float32 (the study builds it in float64 for its exact measurements)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), ssm)


def trained_ssm_denoiser(cfg, ssm, path) -> model_cache.Cached:
    """The SequenceDenoiser trained on fresh state-space sequences (drawn inside the compiled loop) with
    diffusion forcing's per-token noise levels; cached."""
    spec = ssm_denoiser_spec(cfg)
    model_ssm = _float32(ssm)

    def fit():
        model = _build_ssm_denoiser(spec, ssm.dim)
        schedule = optax.warmup_cosine_decay_schedule(0.0, spec["peak_lr"], 100, spec["steps"])
        model, losses = its.models.train(_forcing_loss(path), model,
                                         lambda key: model_ssm.sample(key, spec["batch_size"], spec["length"]),
                                         optax.adamw(schedule), spec["steps"], key=jax.random.key(cfg.seed + 6))
        return model, {"epoch_losses": [float(v) for v in losses.reshape(-1, 50).mean(axis=1)]}

    return model_cache.load_or_train("ssm_denoiser", spec, lambda s: _build_ssm_denoiser(s, ssm.dim), fit)


def ssm_denoiser_error(cfg, ssm, path, cached: model_cache.Cached) -> dict:
    """E‖D(z, t) − E[x | z]‖² / E‖x − E[x | z]‖² on fresh sequences at independent per-token times (the
    learned error as a fraction of the irreducible one), the training record and the parameter count."""
    key_x, key_t, key_noise = jax.random.split(jax.random.key(cfg.seed + 7), 3)
    ssm = _float32(ssm)
    x = ssm.sample(key_x, 4000, cfg.ssm_length)
    t = jax.random.uniform(key_t, x.shape[:2], x.dtype)
    z = path.alpha(t)[..., None] * x + path.sigma(t)[..., None] * jax.random.normal(key_noise, x.shape, x.dtype)
    exact = ssm.posterior(path, z, t)[0]
    learned = cached.model(z, t)
    return {"relative_error": float(jnp.mean((learned - exact) ** 2) / jnp.mean((x - exact) ** 2)),
            "losses": cached.record["epoch_losses"], "seconds": cached.record["seconds"],
            "params": model_cache.num_params(cached.model)}
