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
  laws share (0.6: the call counts then cap the speed-up near 1.3x, so no target applies), and the same
  network with the residual branches of its later blocks scaled by ``residual_scale`` = 0.1 (later layers
  refining the early ones' prediction, as in trained deep transformers: the premise of early-exit drafts),
  where acceptance is high; target >= 1.5x wall clock there. The ceiling from the counts is
  new tokens / (target calls x (cost of a call on gamma + 1 positions + (gamma + 1) x draft cost)), with
  both costs measured here relative to one decode step (rows ``target call on ...`` and ``draft / target``);
  the note gives it beside the measured ratio.
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


def _runner(sampler, prompts, new_tokens):
    @jax.jit
    def run(key):
        result = its.run(sampler, key, prompts, num_steps=new_tokens)
        return result.output, result.stats.nfe
    return functools.partial(run, jax.random.key(0))


def call_cost(model: Transformer, positions: int, *, repeats: int) -> float:
    """Seconds of one cached target call on ``positions`` tokens / seconds of a call on one token (batch 1):
    what verifying a block costs against one decode step on this machine."""
    apply, params = split_forward(model)
    cache = model.init_cache(1, model.max_len)
    call = jax.jit(lambda p, tokens, c: apply(p, tokens, c)[0])
    fns = {n: functools.partial(call, params, jnp.zeros((1, n), jnp.int32), cache) for n in (1, positions)}
    seconds = time_interleaved(fns, repeats=repeats)
    return seconds[positions] / seconds[1]


def bench_decoding(*, vocab_size=256, width=256, depth=8, num_heads=4, prompt_len=8, new_tokens=64,
                   gamma=4, scaled_gamma=6, residual_scale=0.1, block=8, k=4, repeats=5) -> list[dict]:
    rows = []

    def row(*args, **kwargs):
        rows.append(_row(*args, **kwargs))

    max_len = prompt_len + new_tokens + max(gamma, scaled_gamma, block, k) + 2

    def new_target():
        return Transformer(vocab_size, width=width, depth=depth, num_heads=num_heads, max_len=max_len,
                           rngs=nnx.Rngs(0))

    target = new_target()
    prompts = jax.random.randint(jax.random.key(1), (1, prompt_len), 0, vocab_size)
    cache = dict(init_cache=target.init_cache, max_len=max_len)
    fn = logits_fn(target)
    sizes = f"target d={width}, depth {depth}, V={vocab_size}, prompt {prompt_len}, {new_tokens} new tokens, batch 1"
    runs = {
        "rollout greedy": _runner(its.tokens.rollout(fn, temperature=0.0, **cache), prompts, new_tokens),
        "jacobi": _runner(jacobi(fn, block=block, temperature=0.0, **cache), prompts, new_tokens),
        "blockwise": _runner(blockwise(fn, k=k, **cache), prompts, new_tokens),
    }
    outputs = {name: fn() for name, fn in runs.items()}
    seconds = time_interleaved(runs, repeats=repeats)
    greedy = outputs["rollout greedy"][0].tokens
    for name, calls_of, extra in (("jacobi", lambda o: o.iterations, f"block {block}, greedy"),
                                  ("blockwise", lambda o: o.target_calls, f"k={k}, greedy")):
        out = outputs[name][0]
        calls = int(jnp.sum(calls_of(out)))
        note = f"{extra}; {sizes}; same tokens as greedy rollout: {bool(jnp.all(out.tokens == greedy))}"
        row(f"{name}: target calls speed-up", new_tokens / calls, "x", note=f"{calls} calls vs {new_tokens}; {note}")
        row(f"{name}: wall-clock speed-up", seconds["rollout greedy"] / seconds[name], "x", note=note)
    rows += speculative_rows(target, prompts, gamma, max_len, new_tokens, repeats, "random target", sizes,
                             targeted=False)
    scaled = scale_later_residuals(new_target(), residual_scale)
    rows += speculative_rows(scaled, prompts, scaled_gamma, max_len, new_tokens, repeats,
                             f"later residuals x{residual_scale}", sizes, targeted=True)
    return rows


def speculative_rows(target: Transformer, prompts, gamma: int, max_len: int, new_tokens: int, repeats: int,
                     label: str, sizes: str, *, targeted: bool) -> list[dict]:
    """Speculative sampling with the early-exit draft of ``target`` against rollout at temperature 1:
    call costs, target calls and wall-clock speed-ups (the >= 1.5x target when ``targeted``)."""
    draft = early_exit_draft(target)
    fn = logits_fn(target)
    runs = {
        "rollout": _runner(its.tokens.rollout(fn, temperature=1.0, init_cache=target.init_cache, max_len=max_len),
                           prompts, new_tokens),
        "speculative": _runner(speculative(fn, logits_fn(draft), gamma=gamma, temperature=1.0,
                                           target_init_cache=target.init_cache,
                                           draft_init_cache=draft.init_cache, max_len=max_len), prompts, new_tokens),
        "draft rollout": _runner(its.tokens.rollout(logits_fn(draft), temperature=1.0, init_cache=draft.init_cache,
                                                    max_len=max_len), prompts, new_tokens),
    }
    out = runs["speculative"]()[0]
    seconds = time_interleaved(runs, repeats=repeats)
    verify = call_cost(target, gamma + 1, repeats=4 * repeats)
    draft_cost = seconds["draft rollout"] / seconds["rollout"]
    calls = int(jnp.sum(out.target_calls))
    ideal = new_tokens / (calls * (verify + (gamma + 1) * draft_cost))
    note = (f"gamma={gamma}, temperature 1; {sizes}; acceptance {float(out.acceptance_rate):.2f}, "
            f"{float(out.tokens_per_call):.2f} tokens per target call; calls x call costs predict {ideal:.2f}x")
    speed = seconds["rollout"] / seconds["speculative"]
    case = f"speculative ({label}): "
    return [
        _row(case + f"target call on {gamma + 1} positions / on 1", verify, "x",
             note=f"cached forward, batch 1; {sizes}"),
        _row(case + "draft / target cost per token", draft_cost, "x",
             note="early-exit draft: the first block; rollout seconds ratio"),
        _row(case + "target calls speed-up", new_tokens / calls, "x", note=f"{calls} calls vs {new_tokens}; {note}"),
        _row(case + "wall-clock speed-up", speed, "x", ">= 1.5" if targeted else None,
             bool(speed >= 1.5) if targeted else None, note=note),
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
