"""Decoding speed of the transformer: KV-cache ``lax.scan`` decode vs Hugging Face ``generate`` and
vs decoding without a cache.

* cached: :class:`itscale.models.transformer.Transformer` (RoPE, pre-LayerNorm), prefill of the prompt,
  then a jitted ``lax.scan`` of greedy one-token steps through the pure ``logits_fn`` and its KV cache
  (a minimal loop; ``its.tokens.rollout`` is the library's sampler).
* Hugging Face: ``GPT2LMHeadModel(GPT2Config(n_layer, n_embd, n_head, vocab_size))`` randomly
  initialised, ``.generate(do_sample=False, min_new_tokens = max_new_tokens)`` on CPU under
  ``torch.inference_mode``, with ``torch.set_num_threads`` set to the cores JAX uses (XLA's CPU
  thread pool takes every core the process may run on). Same sizes, prompt and new tokens; target:
  JAX >= 2x the tokens/s of HF at batch 1 and 32. At batch 32 JAX also runs with its rows split over
  one CPU device per core (:mod:`experiments.bench.devices`; the same program, each device decoding 16
  rows on its own core, all reading one copy of the weights, ``itscale.core.sharding.replicate``);
  the target then applies to that row, the one-device ratio is reported beside it. Skipped (rows with a note) without torch/transformers.
* library sampler: ``its.run(its.tokens.rollout(logits_fn(model), temperature=0.0, ...))`` (prefill,
  then one greedy token per step, the same model calls) vs the minimal scan above at the largest batch,
  same prompts and tokens; target: the library costs <= 1.25x the minimal loop.
* no cache: the same model recomputing all ``no_cache_length`` positions of the static token buffer
  at every step (the jit-friendly way without a cache) vs the cached decode of the same total
  length; target >= 5x. Its per-step cost does not depend on the step, so a few steps are timed.

Every figure is a ratio of medians of interleaved repeats in one run. ``python -m
experiments.bench.decode [--quick]`` prints the table.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx

import itscale as its
from experiments.bench.devices import core_mesh, cores, use_every_core
from experiments.bench.timing import time_interleaved
from itscale.models.transformer import Transformer, logits_fn, split_forward


def greedy_decode(model: Transformer, new_tokens: int):
    """Jitted ``decode(params, prompts) -> (batch, new_tokens)``: prefill, then a scan of cached steps."""
    apply, _ = split_forward(model)

    @jax.jit
    def decode(params, prompts):
        batch, prompt_len = prompts.shape
        logits, cache = apply(params, prompts, model.init_cache(batch, prompt_len + new_tokens))

        def step(carry, _):
            last, cache = carry
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
            logits, cache = apply(params, token[:, None], cache)
            return (logits[:, -1], cache), token

        return jax.lax.scan(step, (logits[:, -1], cache), None, length=new_tokens)[1].T

    return decode


def no_cache_decode(model: Transformer, length: int, steps: int):
    """Jitted ``decode(params, prompts)``: ``steps`` greedy steps, each a full forward of ``length`` slots."""
    graphdef, _ = nnx.split(model)

    @jax.jit
    def decode(params, prompts):
        batch, prompt_len = prompts.shape
        buffer = jnp.zeros((batch, length), jnp.int32).at[:, :prompt_len].set(prompts)

        def step(buffer, i):
            logits = nnx.merge(graphdef, params)(buffer)
            last = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1 + i, axis=1, keepdims=False)
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_index_in_dim(buffer, token, prompt_len + i, axis=1), None

        return jax.lax.scan(step, buffer, jnp.arange(steps))[0]

    return decode


def _hf_generate(vocab_size, width, depth, num_heads, max_positions, threads):
    """``generate(prompts, new_tokens)`` of a random GPT-2 (numpy prompts), None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=depth, n_embd=width, n_head=num_heads, vocab_size=vocab_size,
                                     n_positions=max_positions, bos_token_id=0, eos_token_id=None,
                                     pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()

    def generate(prompts, new_tokens):
        ids = torch.from_numpy(prompts.copy()).long()
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

    return generate


def bench_decode(*, batch_sizes=(1, 32), prompt_len: int = 16, new_tokens: int = 128,
                 vocab_size: int = 1024, width: int = 256, depth: int = 4, num_heads: int = 4,
                 no_cache_length: int = 256, no_cache_steps: int = 16, repeats: int = 5,
                 include_torch: bool = True) -> list[dict]:
    """Rows of the decode benchmark (see the module docstring)."""
    threads = cores()
    model = Transformer(vocab_size, width=width, depth=depth, num_heads=num_heads, mlp_ratio=4,
                        max_len=max(prompt_len + new_tokens, no_cache_length), rngs=nnx.Rngs(0))
    _, params = split_forward(model)
    hf = _hf_generate(vocab_size, width, depth, num_heads, max(prompt_len + new_tokens, no_cache_length),
                      threads) if include_torch else None
    sizes = f"L={depth}, d={width}, H={num_heads}, V={vocab_size}, prompt {prompt_len}"
    rows = []

    def row(case, value, unit, target=None, ok=None, note=""):
        rows.append(dict(bench="decode", case=case, value=value, unit=unit, target=target, ok=ok, note=note))

    cached = greedy_decode(model, new_tokens)
    mesh = core_mesh()
    for batch in batch_sizes:
        prompts = jax.random.randint(jax.random.key(batch), (batch, prompt_len), 0, vocab_size)
        fns = {"jax": functools.partial(cached, params, prompts)}
        split = mesh is not None and batch % mesh.size == 0 and batch > 1
        if split:  # rows split over the devices, every device reading one copy of the weights
            fns["jax_split"] = functools.partial(cached, its.core.sharding.replicate(params, mesh),
                                                 its.core.sharding.shard_particles(prompts, mesh))
        if hf is not None:
            host_prompts = jax.device_get(prompts)
            fns["hf"] = functools.partial(hf, host_prompts, new_tokens)
        seconds = time_interleaved(fns, repeats=repeats)
        speed = {name: batch * new_tokens / s for name, s in seconds.items()}
        note = f"{sizes}, {new_tokens} new tokens, greedy"
        split_case = f"batch {batch} split over {mesh.size if mesh else 0} CPU devices"
        row(f"batch {batch}: JAX KV-cache scan", speed["jax"], "tokens/s", note=note)
        if split:
            row(f"{split_case}: JAX KV-cache scan", speed["jax_split"], "tokens/s", note=note)
        if hf is None:
            row(f"batch {batch}: HF generate", None, "tokens/s",
                note="skipped: torch/transformers not installed")
            continue
        row(f"batch {batch}: HF GPT-2 generate", speed["hf"], "tokens/s",
            note=f"{note}; torch.set_num_threads({threads}) = JAX's CPU threads")
        # The >= 2 target applies to JAX's fastest way on this machine: the batch split over the
        # cores when there are several CPU devices (both sides then use every core), else one device.
        ratio = speed["jax"] / speed["hf"]
        row(f"batch {batch}: JAX / HF", ratio, "x", *((None, None) if split else (">= 2", bool(ratio >= 2.0))))
        if split:
            ratio = speed["jax_split"] / speed["hf"]
            row(f"{split_case}: JAX / HF", ratio, "x", ">= 2", bool(ratio >= 2.0))

    batch = max(batch_sizes)
    prompts = jax.random.randint(jax.random.key(batch), (batch, prompt_len), 0, vocab_size)
    sampler = its.tokens.rollout(logits_fn(model), temperature=0.0, init_cache=model.init_cache,
                                 max_len=model.max_len)

    def library():
        return its.run(sampler, jax.random.key(0), prompts, num_steps=new_tokens).output.tokens

    same = bool(jnp.all(library()[:, prompt_len:] == cached(params, prompts)))
    seconds = time_interleaved({"scan": functools.partial(cached, params, prompts), "rollout": library},
                               repeats=repeats)
    ratio = seconds["rollout"] / seconds["scan"]
    row(f"batch {batch}: its.run(rollout) / minimal scan", ratio, "x", "<= 1.25", bool(ratio <= 1.25),
        note=f"greedy, {new_tokens} new tokens; rollout {batch * new_tokens / seconds['rollout']:.0f} tokens/s; "
             f"same tokens: {same}")

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    row("machine load average (1, 5, 15 min)", None, "", note=f"{load} on {threads} cores: contention "
        "slows both sides (torch's threads more)")
    new = no_cache_length - prompt_len
    with_cache = greedy_decode(model, new)
    without = no_cache_decode(model, no_cache_length, no_cache_steps)
    prompts = jax.random.randint(jax.random.key(0), (1, prompt_len), 0, vocab_size)
    seconds = time_interleaved({"cache": functools.partial(with_cache, params, prompts),
                                "none": functools.partial(without, params, prompts)}, repeats=repeats)
    speed_cache, speed_none = new / seconds["cache"], no_cache_steps / seconds["none"]
    note = f"batch 1, length {no_cache_length} ({prompt_len} + {new}); no cache: {no_cache_steps} timed steps"
    row(f"length {no_cache_length}: JAX KV-cache", speed_cache, "tokens/s", note=note)
    row(f"length {no_cache_length}: JAX no cache (full recompute)", speed_none, "tokens/s", note=note)
    row(f"length {no_cache_length}: cache / no cache", speed_cache / speed_none, "x", ">= 5",
        bool(speed_cache / speed_none >= 5.0))
    return rows


def rows(quick: bool = False) -> list[dict]:
    """Entry point of ``python -m experiments.bench``."""
    return bench_decode(repeats=3 if quick else 5, new_tokens=64 if quick else 128)


if __name__ == "__main__":
    from experiments.common import markdown_table

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer new tokens and repeats")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    use_every_core()
    print(markdown_table(bench_decode(vocab_size=args.vocab_size, repeats=3 if args.quick else 5,
                                      new_tokens=64 if args.quick else 128)))
