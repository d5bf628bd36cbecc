"""Parallel decoding against plain KV-cache AR decoding, and MDLM steps/s against the sequence length.

* Jacobi (``its.tokens.jacobi``, block b), blockwise parallel decoding (``its.tokens.blockwise``, k) and
  speculative sampling (``its.tokens.speculative``) against ``its.tokens.rollout`` on a random
  :class:`itscale.models.transformer.Transformer`, the same prompts and new tokens, batch 1: target
  calls per row (rollout: one per new token) and wall-clock seconds, both as speed-ups (rollout / method).
  Jacobi and blockwise decode greedily (temperature 0, the same tokens as greedy rollout); speculative
  samples at temperature 1 against rollout at temperature 1.
* The speculative draft is the target's first block with the target's embedding, final norm and head
  (an early-exit "self-speculative" draft, Zhang et al. 2023, arXiv 2309.08168): about ``depth``× fewer
  block FLOPs per token. Two targets: the random one above, whose acceptance rate is whatever two random
  laws share (0.6), and the same network with the residual branches of its later blocks scaled by
  ``residual_scale`` = 0.1 (later layers refining the early ones' prediction, as in trained deep
  transformers: the premise of early-exit drafts), where acceptance is high.
* What the counts allow: new tokens / (target calls x (cost of a call on gamma + 1 positions +
  (gamma + 1) x draft cost)), with both costs measured here relative to one decode step (rows ``target
  call on ...``, timed inside a compiled loop as the samplers make the calls, and ``draft / target``).
  The >= 1.5x wall-clock target applies where that ceiling is >= 1.5x ("where acceptance allows", and the
  machine's cost of a many-position call with it); the row ``wall clock / what the call costs allow``
  measures the sampler's own overhead.
* On XLA:CPU, Jacobi, blockwise and the second speculative target are also run with every program of
  their rows (rollouts, samplers, draft, call costs) compiled with ``YNN_FUSIONS_OFF`` (rows marked
  "YNNPACK fusions off"): by default XLA:CPU lowers the few-row matrix products of a many-position call
  to YNNPACK fusions, which on a 2-core machine make a 7-position call cost about 3 decode steps;
  Eigen's kernels bring it to about 2.
* MDLM (``its.hybrid.mdlm``) on a bidirectional use of the same transformer class as denoiser
  (``model(tokens)``, a full forward, time ignored): steps/s and positions/s against L.

Every ratio is a ratio of medians of interleaved repeats in one run (:mod:`experiments.bench.timing`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

import itscale as its
from experiments.bench.timing import time_fn, time_interleaved
from itscale.hybrid.masked_diffusion import mdlm
from itscale.models.transformer import Transformer, logits_fn, split_forward
from itscale.tokens.blockwise import blockwise
from itscale.tokens.jacobi import jacobi
from itscale.tokens.speculative import speculative


# XLA:CPU compiler option (``jax.jit(..., compiler_options=...)``, per program) that keeps matrix products
# out of YNNPACK fusions, for Eigen's kernels.
YNN_FUSIONS_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def early_exit_draft(target: Transformer, *, layers: int = 1) -> Transformer:
    """A Transformer sharing the target's embedding, first ``layers`` blocks, final norm and head."""
    width = target.num_heads * target.head_dim
    draft = Transformer(target.vocab_size, width=width, depth=layers, num_heads=target.num_heads,
                        max_len=target.max_len, rngs=nnx.Rngs(1))
    draft.embed, draft.final_norm, draft.head = target.embed, target.final_norm, target.head
    draft.blocks = nnx.List([target.blocks[i] for i in range(layers)])
    return draft


def scale_later_residuals(model: Transformer, scale: float) -> Transformer:
    """``model`` with the attention and MLP output projections of every block after the first scaled by
    ``scale`` (in place; returned for chaining)."""
    for block in list(model.blocks)[1:]:
        for dense in (block.out, block.mlp_out):
            dense.kernel[...] = dense.kernel[...] * scale
            dense.bias[...] = dense.bias[...] * scale
    return model


def _row(case, value, unit, target=None, ok=None, note="") -> dict:
    return dict(bench="sequences", case=case, value=value, unit=unit, target=target, ok=ok, note=note)


def _runner(sampler, prompts, new_tokens, compiler_options=None):
    @functools.partial(jax.jit, compiler_options=compiler_options)
    def run(key):
        result = its.run(sampler, key, prompts, num_steps=new_tokens)
        return result.output, result.stats.nfe
    return functools.partial(run, jax.random.key(0))


def call_cost(model: Transformer, positions: int, *, repeats: int, calls: int = 16,
              compiler_options=None) -> float:
    """Seconds of a cached target call on ``positions`` tokens / seconds of a call on one token (batch 1):
    what verifying a block costs against one decode step on this machine. Each is timed as ``calls``
    calls inside one compiled loop, the way the samplers make them (a jitted call on its own also pays
    dispatch and a cold thread pool, which skews the ratio)."""
    apply, params = split_forward(model)
    cache = model.init_cache(1, model.max_len)
    logits_dtype = jax.eval_shape(apply, params, jnp.zeros((1, 1), jnp.int32), cache)[0].dtype

    def loop(length):
        tokens = jnp.zeros((1, length), jnp.int32)

        @functools.partial(jax.jit, compiler_options=compiler_options)
        def run(params, cache):
            def call(_, carry):
                cache, total = carry
                logits, written = apply(params, tokens, cache)
                return written._replace(lengths=cache.lengths), total + logits[0, -1, 0]
            return jax.lax.fori_loop(0, calls, call, (cache, jnp.zeros((), logits_dtype)))[1]
        return functools.partial(run, params, cache)

    seconds = time_interleaved({n: loop(n) for n in (1, positions)}, repeats=repeats)
    return seconds[positions] / seconds[1]


def bench_decoding(*, vocab_size=256, width=256, depth=8, num_heads=4, prompt_len=8, new_tokens=64,
                   gamma=4, scaled_gamma=6, residual_scale=0.1, block=8, k=4, repeats=5) -> list[dict]:
    max_len = prompt_len + new_tokens + max(gamma, scaled_gamma, block, k) + 2

    def new_target():
        return Transformer(vocab_size, width=width, depth=depth, num_heads=num_heads, max_len=max_len,
                           rngs=nnx.Rngs(0))

    target = new_target()
    prompts = jax.random.randint(jax.random.key(1), (1, prompt_len), 0, vocab_size)
    sizes = f"target d={width}, depth {depth}, V={vocab_size}, prompt {prompt_len}, {new_tokens} new tokens, batch 1"
    options = {"": None}
    if jax.default_backend() == "cpu":
        options[", YNNPACK fusions off"] = YNN_FUSIONS_OFF
    rows = []
    for suffix, compiler_options in options.items():
        rows += greedy_rows(target, prompts, block, k, max_len, new_tokens, repeats, suffix, sizes,
                            compiler_options=compiler_options)
    rows += speculative_rows(target, prompts, gamma, max_len, new_tokens, repeats, "random target", sizes)
    scaled = scale_later_residuals(new_target(), residual_scale)
    for suffix, compiler_options in options.items():
        rows += speculative_rows(scaled, prompts, scaled_gamma, max_len, new_tokens, repeats,
                                 f"later residuals x{residual_scale}{suffix}", sizes,
                                 compiler_options=compiler_options)
    return rows


def greedy_rows(target: Transformer, prompts, block: int, k: int, max_len: int, new_tokens: int, repeats: int,
                label: str, sizes: str, *, compiler_options=None) -> list[dict]:
    """Jacobi (``block``) and blockwise (``k``) against greedy rollout: target calls and wall-clock
    speed-ups, and whether the tokens are greedy rollout's; every program compiled with ``compiler_options``."""
    cache = dict(init_cache=target.init_cache, max_len=max_len)
    fn = logits_fn(target)
    runner = functools.partial(_runner, prompts=prompts, new_tokens=new_tokens, compiler_options=compiler_options)
    runs = {
        "rollout greedy": runner(its.tokens.rollout(fn, temperature=0.0, **cache)),
        "jacobi": runner(jacobi(fn, block=block, temperature=0.0, **cache)),
        "blockwise": runner(blockwise(fn, k=k, **cache)),
    }
    outputs = {name: fn() for name, fn in runs.items()}
    seconds = time_interleaved(runs, repeats=repeats)
    greedy = outputs["rollout greedy"][0].tokens
    rows = []
    for name, calls_of, extra in (("jacobi", lambda o: o.iterations, f"block {block}, greedy"),
                                  ("blockwise", lambda o: o.target_calls, f"k={k}, greedy")):
        out = outputs[name][0]
        calls = int(jnp.sum(calls_of(out)))
        note = f"{extra}; {sizes}; same tokens as greedy rollout: {bool(jnp.all(out.tokens == greedy))}"
        rows.append(_row(f"{name}{label}: target calls speed-up", new_tokens / calls, "x",
                         note=f"{calls} calls vs {new_tokens}; {note}"))
        rows.append(_row(f"{name}{label}: wall-clock speed-up", seconds["rollout greedy"] / seconds[name], "x",
                         note=note))
    return rows


def speculative_rows(target: Transformer, prompts, gamma: int, max_len: int, new_tokens: int, repeats: int,
                     label: str, sizes: str, *, compiler_options=None) -> list[dict]:
    """Speculative sampling with the early-exit draft of ``target`` against rollout at temperature 1:
    call costs, target calls, the speed-up they allow and the wall-clock speed-up, every program compiled
    with ``compiler_options``. The >= 1.5x target applies where the calls and call costs allow it (their
    ceiling >= 1.5x)."""
    draft = early_exit_draft(target)
    fn = logits_fn(target)
    runner = functools.partial(_runner, prompts=prompts, new_tokens=new_tokens, compiler_options=compiler_options)
    runs = {
        "rollout": runner(its.tokens.rollout(fn, temperature=1.0, init_cache=target.init_cache, max_len=max_len)),
        "speculative": runner(speculative(fn, logits_fn(draft), gamma=gamma, temperature=1.0,
                                          target_init_cache=target.init_cache, draft_init_cache=draft.init_cache,
                                          max_len=max_len)),
        "draft rollout": runner(its.tokens.rollout(logits_fn(draft), temperature=1.0, init_cache=draft.init_cache,
                                                   max_len=max_len)),
    }
    out = runs["speculative"]()[0]
    seconds = time_interleaved(runs, repeats=repeats)
    verify = call_cost(target, gamma + 1, repeats=repeats, compiler_options=compiler_options)
    draft_cost = seconds["draft rollout"] / seconds["rollout"]
    calls = int(jnp.sum(out.target_calls))
    ideal = new_tokens / (calls * (verify + (gamma + 1) * draft_cost))
    note = (f"gamma={gamma}, temperature 1; {sizes}; acceptance {float(out.acceptance_rate):.2f}, "
            f"{float(out.tokens_per_call):.2f} tokens per target call; calls x call costs predict {ideal:.2f}x")
    speed = seconds["rollout"] / seconds["speculative"]
    allowed = ideal >= 1.5
    case = f"speculative ({label}): "
    return [
        _row(case + f"target call on {gamma + 1} positions / on 1", verify, "x",
             note=f"cached forward, batch 1; {sizes}"),
        _row(case + "draft / target cost per token", draft_cost, "x",
             note="early-exit draft: the first block; rollout seconds ratio"),
        _row(case + "target calls speed-up", new_tokens / calls, "x", note=f"{calls} calls vs {new_tokens}; {note}"),
        _row(case + "wall-clock speed-up", speed, "x", ">= 1.5" if allowed else None,
             bool(speed >= 1.5) if allowed else None,
             note=note + ("" if allowed else " (< 1.5x: no target)")),
        _row(case + "wall clock / what the call costs allow", speed / ideal, "x", note=note),
    ]


def bench_mdlm(*, lengths=(16, 64, 256), vocab_size=256, width=128, depth=2, num_heads=4, batch=8, steps=16,
               repeats=3) -> list[dict]:
    rows = []
    for length in lengths:
        model = Transformer(vocab_size + 1, width=width, depth=depth, num_heads=num_heads, max_len=length,
                            rngs=nnx.Rngs(0))
        sampler = mdlm(lambda tokens, t, model=model: model(tokens), mask_id=vocab_size)
        x = jnp.full((batch, length), vocab_size, jnp.int32)
        run = jax.jit(lambda key, sampler=sampler, x=x: its.run(sampler, key, x, num_steps=steps).output.tokens)
        seconds = time_fn(functools.partial(run, jax.random.key(0)), repeats=repeats)
        rows.append(_row(f"MDLM L={length}: steps/s", steps / seconds, "steps/s",
                         note=f"batch {batch}, {steps} steps, denoiser d={width}, depth {depth}; "
                              f"{batch * length * steps / seconds:.0f} positions/s"))
    return rows


def rows(quick: bool = False) -> list[dict]:
    """Entry point of ``python -m experiments.bench``."""
    if quick:
        return bench_decoding(new_tokens=32, repeats=3) + bench_mdlm(lengths=(16, 64), repeats=2)
    return bench_decoding() + bench_mdlm()


if __name__ == "__main__":
    import argparse

    from experiments.common import markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    print(markdown_table(rows(parser.parse_args().quick)))
